package httpapi_test

import (
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"
	"gopkg.in/yaml.v3"

	"wrenn.dev/wrenn/api"
	"wrenn.dev/wrenn/internal/control/httpapi"
)

// servedOutsideTheDocument are routes that are not API operations: the
// document itself, Swagger UI and the dashboard's files.
var servedOutsideTheDocument = []string{"GET /openapi.yaml", "* /docs", "* /docs/*", "* /*"}

// TestRoutesMatchOpenAPI fails when the router and api/openapi.yaml
// disagree on any method and path.
func TestRoutesMatchOpenAPI(t *testing.T) {
	var doc struct {
		Paths map[string]map[string]any `yaml:"paths"`
	}
	if err := yaml.Unmarshal(api.OpenAPI, &doc); err != nil {
		t.Fatalf("api/openapi.yaml: %v", err)
	}
	var documented []string
	for path, ops := range doc.Paths {
		for method := range ops {
			switch method {
			case "get", "post", "put", "patch", "delete", "head", "options":
				documented = append(documented, strings.ToUpper(method)+" "+path)
			}
		}
	}
	h := httpapi.New(nil, httpapi.Options{OpenAPI: []byte("x"), Docs: http.NotFoundHandler(), Dashboard: http.NotFoundHandler()})
	var served []string
	if err := chi.Walk(h.(chi.Routes), func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		r := method + " " + route
		for _, skip := range servedOutsideTheDocument {
			if r == skip || (strings.HasPrefix(skip, "* ") && route == skip[2:]) {
				return nil
			}
		}
		served = append(served, r)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	slices.Sort(documented)
	slices.Sort(served)
	for _, r := range served {
		if !slices.Contains(documented, r) {
			t.Errorf("%s is served but not in api/openapi.yaml", r)
		}
	}
	for _, r := range documented {
		if !slices.Contains(served, r) {
			t.Errorf("%s is in api/openapi.yaml but not served", r)
		}
	}
	if len(served) < 30 {
		t.Errorf("only %d routes found; the walk is broken", len(served))
	}
}
