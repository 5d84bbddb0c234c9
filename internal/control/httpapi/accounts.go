package httpapi

import (
	"net/http"

	"github.com/go-chi/chi/v5"

	"wrenn.dev/wrenn/internal/control"
	"wrenn.dev/wrenn/internal/httpjson"
)

func (a *api) login(w http.ResponseWriter, r *http.Request) {
	var b struct {
		Email    string `json:"email"`
		Password string `json:"password"`
	}
	if err := decode(w, r, &b, false); err != nil {
		a.fail(w, r, err)
		return
	}
	s, err := a.svc.Login(r.Context(), b.Email, b.Password)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, map[string]any{"token": s.Token, "expires_at": s.ExpiresAt, "user": userJSON(s.User)})
}

func (a *api) me(w http.ResponseWriter, r *http.Request) {
	me, err := a.svc.WhoAmI(r.Context(), principal(r))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	out := map[string]any{"team": teamJSON(me.Team), "role": me.Role, "user": nil, "api_key": nil}
	if me.User != nil {
		out["user"] = userJSON(*me.User)
	}
	if me.APIKey != nil {
		out["api_key"] = apiKeyJSON(*me.APIKey)
	}
	httpjson.Write(w, http.StatusOK, out)
}

func (a *api) listAPIKeys(w http.ResponseWriter, r *http.Request) {
	keys, err := a.svc.ListAPIKeys(r.Context(), principal(r))
	answerList(a, w, r, "api_keys", keys, err, apiKeyJSON)
}

func (a *api) createAPIKey(w http.ResponseWriter, r *http.Request) {
	var b struct {
		Name string `json:"name"`
		Role string `json:"role"`
	}
	if err := decode(w, r, &b, false); err != nil {
		a.fail(w, r, err)
		return
	}
	k, err := a.svc.CreateAPIKey(r.Context(), principal(r), b.Name, b.Role)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusCreated, struct {
		apiKeyView
		Key string `json:"key"`
	}{apiKeyJSON(k.APIKey), k.Key})
}

func (a *api) revokeAPIKey(w http.ResponseWriter, r *http.Request) {
	if err := a.svc.RevokeAPIKey(r.Context(), principal(r), chi.URLParam(r, "id")); err != nil {
		a.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *api) listUsers(w http.ResponseWriter, r *http.Request) {
	users, err := a.svc.ListUsers(r.Context(), principal(r))
	answerList(a, w, r, "users", users, err, userJSON)
}

func (a *api) createUser(w http.ResponseWriter, r *http.Request) {
	var b struct {
		Email    string `json:"email"`
		Password string `json:"password"`
		Role     string `json:"role"`
		TeamID   string `json:"team_id"`
	}
	if err := decode(w, r, &b, false); err != nil {
		a.fail(w, r, err)
		return
	}
	u, err := a.svc.CreateUser(r.Context(), principal(r), control.NewUser{Email: b.Email, Password: b.Password, Role: b.Role, TeamID: b.TeamID})
	if err != nil {
		a.fail(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusCreated, userJSON(u))
}

func (a *api) listTeams(w http.ResponseWriter, r *http.Request) {
	teams, err := a.svc.ListTeams(r.Context(), principal(r))
	answerList(a, w, r, "teams", teams, err, teamJSON)
}

func (a *api) createTeam(w http.ResponseWriter, r *http.Request) {
	var b struct {
		Name string `json:"name"`
	}
	if err := decode(w, r, &b, false); err != nil {
		a.fail(w, r, err)
		return
	}
	t, err := a.svc.CreateTeam(r.Context(), principal(r), b.Name)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusCreated, teamJSON(t))
}

func (a *api) listHosts(w http.ResponseWriter, r *http.Request) {
	hosts, err := a.svc.ListHosts(r.Context(), principal(r))
	answerList(a, w, r, "hosts", hosts, err, hostJSON)
}

func (a *api) registerHost(w http.ResponseWriter, r *http.Request) {
	var b struct {
		Address string `json:"address"`
	}
	if err := decode(w, r, &b, false); err != nil {
		a.fail(w, r, err)
		return
	}
	h, err := a.svc.RegisterHost(r.Context(), principal(r), b.Address)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusCreated, hostJSON(h))
}

func (a *api) removeHost(w http.ResponseWriter, r *http.Request) {
	if err := a.svc.RemoveHost(r.Context(), principal(r), chi.URLParam(r, "id")); err != nil {
		a.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *api) listTemplates(w http.ResponseWriter, r *http.Request) {
	list, err := a.svc.ListTemplates(r.Context(), principal(r))
	answerList(a, w, r, "templates", list, err, templateJSON)
}

func (a *api) createSnapshot(w http.ResponseWriter, r *http.Request) {
	var b struct {
		SandboxID string `json:"sandbox_id"`
		Name      string `json:"name"`
	}
	if err := decode(w, r, &b, false); err != nil {
		a.fail(w, r, err)
		return
	}
	t, err := a.svc.CreateSnapshot(r.Context(), principal(r), b.SandboxID, b.Name)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusCreated, templateJSON(t))
}

func (a *api) listSnapshots(w http.ResponseWriter, r *http.Request) {
	list, err := a.svc.ListSnapshots(r.Context(), principal(r))
	answerList(a, w, r, "snapshots", list, err, templateJSON)
}

func (a *api) deleteSnapshot(w http.ResponseWriter, r *http.Request) {
	if err := a.svc.DeleteSnapshot(r.Context(), principal(r), chi.URLParam(r, "name")); err != nil {
		a.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// answerList answers a list as {"<field>": [views]}, or err.
func answerList[T, V any](a *api, w http.ResponseWriter, r *http.Request, field string, items []T, err error, view func(T) V) {
	if err != nil {
		a.fail(w, r, err)
		return
	}
	out := make([]V, len(items))
	for i, it := range items {
		out[i] = view(it)
	}
	httpjson.Write(w, http.StatusOK, map[string]any{field: out})
}
