package api

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// methods are the HTTP methods an OpenAPI path item may hold.
var methods = []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}

func parse(t *testing.T) map[string]any {
	t.Helper()
	var doc map[string]any
	if err := yaml.Unmarshal(OpenAPI, &doc); err != nil {
		t.Fatalf("yaml.Unmarshal(openapi.yaml): %v", err)
	}
	return doc
}

// operations calls fn for each operation of the document.
func operations(t *testing.T, doc map[string]any, fn func(name string, op map[string]any)) {
	t.Helper()
	paths, ok := doc["paths"].(map[string]any)
	if !ok || len(paths) == 0 {
		t.Fatalf("openapi.yaml has no paths")
	}
	for path, item := range paths {
		item, ok := item.(map[string]any)
		if !ok {
			t.Errorf("path %s is not an object", path)
			continue
		}
		for _, m := range methods {
			if op, ok := item[m].(map[string]any); ok {
				fn(strings.ToUpper(m)+" "+path, op)
			}
		}
	}
}

func TestVersion(t *testing.T) {
	if v := parse(t)["openapi"]; v != "3.1.0" {
		t.Fatalf("openapi = %v, want 3.1.0", v)
	}
}

func TestOperationIDs(t *testing.T) {
	seen := map[string]string{}
	operations(t, parse(t), func(name string, op map[string]any) {
		id, _ := op["operationId"].(string)
		if id == "" {
			t.Errorf("%s has no operationId", name)
			return
		}
		if other, dup := seen[id]; dup {
			t.Errorf("%s and %s share operationId %q", name, other, id)
		}
		seen[id] = name
	})
}

// TestErrorResponses checks that every operation names a 4xx answer, that
// each error answer is the Error schema, and that only the WebSocket
// routes accept ?token=.
func TestErrorResponses(t *testing.T) {
	doc := parse(t)
	operations(t, doc, func(name string, op map[string]any) {
		responses, _ := op["responses"].(map[string]any)
		has4xx := false
		for code, resp := range responses {
			if !strings.HasPrefix(code, "4") && !strings.HasPrefix(code, "5") {
				continue
			}
			has4xx = has4xx || strings.HasPrefix(code, "4")
			if !isErrorResponse(doc, resp) {
				t.Errorf("%s: response %s is not the Error schema", name, code)
			}
		}
		// The health check has no input and no credential to refuse.
		if !has4xx && name != "GET /healthz" {
			t.Errorf("%s declares no 4xx response", name)
		}
		ws := strings.HasSuffix(name, "/pty")
		if got := acceptsQueryToken(op); got != ws {
			t.Errorf("%s: accepts ?token= = %v, want %v (only the WebSocket routes do)", name, got, ws)
		}
		if _, ok := responses["101"]; ok != ws {
			t.Errorf("%s: has a 101 answer = %v, want %v", name, ok, ws)
		}
	})
}

func acceptsQueryToken(op map[string]any) bool {
	sec, _ := op["security"].([]any)
	for _, req := range sec {
		if m, ok := req.(map[string]any); ok {
			if _, ok := m["queryToken"]; ok {
				return true
			}
		}
	}
	return false
}

// isErrorResponse reports whether resp (inline or a $ref) has a JSON body
// of the Error schema.
func isErrorResponse(doc map[string]any, resp any) bool {
	m, _ := resp.(map[string]any)
	if ref, ok := m["$ref"].(string); ok {
		target, err := resolve(doc, ref)
		if err != nil {
			return false
		}
		m, _ = target.(map[string]any)
	}
	content, _ := m["content"].(map[string]any)
	js, _ := content["application/json"].(map[string]any)
	schema, _ := js["schema"].(map[string]any)
	return schema["$ref"] == "#/components/schemas/Error"
}

func TestRefsResolve(t *testing.T) {
	doc := parse(t)
	var walk func(at string, v any)
	n := 0
	walk = func(at string, v any) {
		switch v := v.(type) {
		case map[string]any:
			if ref, ok := v["$ref"].(string); ok {
				n++
				if _, err := resolve(doc, ref); err != nil {
					t.Errorf("%s: $ref %s: %v", at, ref, err)
				}
			}
			for k, c := range v {
				walk(at+"/"+k, c)
			}
		case []any:
			for i, c := range v {
				walk(fmt.Sprintf("%s/%d", at, i), c)
			}
		}
	}
	walk("#", doc)
	if n < 50 {
		t.Errorf("found only %d $refs; the walk is not seeing the document", n)
	}
}

// resolve follows a local JSON pointer ("#/components/schemas/Error").
func resolve(doc map[string]any, ref string) (any, error) {
	rest, ok := strings.CutPrefix(ref, "#/")
	if !ok {
		return nil, fmt.Errorf("not a local reference")
	}
	var cur any = doc
	for _, part := range strings.Split(rest, "/") {
		part = strings.NewReplacer("~1", "/", "~0", "~").Replace(part)
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("%q is inside a non-object", part)
		}
		if cur, ok = m[part]; !ok {
			return nil, fmt.Errorf("no %q", part)
		}
	}
	return cur, nil
}

// TestRequestBodiesAreClosed checks that every JSON request body schema
// rejects unknown fields, as the server does.
func TestRequestBodiesAreClosed(t *testing.T) {
	doc := parse(t)
	operations(t, doc, func(name string, op map[string]any) {
		body, _ := op["requestBody"].(map[string]any)
		content, _ := body["content"].(map[string]any)
		js, ok := content["application/json"].(map[string]any)
		if !ok {
			return
		}
		schema, _ := js["schema"].(map[string]any)
		if ref, ok := schema["$ref"].(string); ok {
			target, err := resolve(doc, ref)
			if err != nil {
				t.Errorf("%s: request body: %v", name, err)
				return
			}
			schema, _ = target.(map[string]any)
		}
		if schema["additionalProperties"] != false {
			t.Errorf("%s: request body schema allows unknown fields", name)
		}
	})
}

// TestPathParameters checks that every {param} in a path is declared.
func TestPathParameters(t *testing.T) {
	doc := parse(t)
	paths := doc["paths"].(map[string]any)
	for path, item := range paths {
		item := item.(map[string]any)
		var declared []string
		params, _ := item["parameters"].([]any)
		for _, p := range params {
			pm, _ := p.(map[string]any)
			if ref, ok := pm["$ref"].(string); ok {
				target, _ := resolve(doc, ref)
				pm, _ = target.(map[string]any)
			}
			if pm["in"] == "path" {
				declared = append(declared, pm["name"].(string))
			}
		}
		for _, seg := range strings.Split(path, "/") {
			if name, ok := strings.CutPrefix(seg, "{"); ok {
				name = strings.TrimSuffix(name, "}")
				if !slices.Contains(declared, name) {
					t.Errorf("path %s: parameter %q is not declared at the path level", path, name)
				}
			}
		}
	}
}
