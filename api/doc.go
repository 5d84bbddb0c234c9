// Package api holds the control plane's OpenAPI document.
//
// openapi.yaml describes every route of the REST and WebSocket API
// (docs/api.md is the overview); the server serves it at /openapi.yaml and
// a test checks that the router and the document agree.
package api

import _ "embed"

// OpenAPI is api/openapi.yaml, an OpenAPI 3.1.0 document.
//
//go:embed openapi.yaml
var OpenAPI []byte
