// Package httpjson writes JSON responses and errors for Wrenn's HTTP
// surfaces. Errors are written as {"message": "...", "code": <status>}, the
// shape E2B's envd and REST API use, with the status from errdefs.HTTPStatus.
package httpjson

import (
	"encoding/json"
	"log/slog"
	"net/http"

	"wrenn.dev/wrenn/internal/errdefs"
)

// ErrorBody is the JSON body of every error response.
type ErrorBody struct {
	Message string `json:"message"`
	Code    int    `json:"code"`
}

// Write writes v as JSON with the given status.
func Write(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// Error writes err as an error response. Unclassified (internal) errors are
// logged with their details and answered with a fixed message.
func Error(w http.ResponseWriter, r *http.Request, log *slog.Logger, err error) {
	status := errdefs.HTTPStatus(err)
	if errdefs.Class(err) == nil && log != nil {
		log.ErrorContext(r.Context(), "request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	Write(w, status, ErrorBody{Message: errdefs.PublicMessage(err), Code: status})
}
