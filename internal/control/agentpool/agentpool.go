// Package agentpool hands out Connect clients for host agents, one per
// address, sharing one HTTP/2 (h2c) transport so that each agent gets one
// connection that every call and stream multiplexes over. Every call
// carries the cluster's shared agent secret.
package agentpool

import (
	"net/http"
	"sync"

	"connectrpc.com/connect"

	"wrenn.dev/wrenn/internal/agent/agentapi"
	"wrenn.dev/wrenn/internal/gen/hostagent/v1/hostagentv1connect"
)

// Pool is a set of agent clients. It is safe for concurrent use.
type Pool struct {
	secret  string
	hc      *http.Client
	mu      sync.Mutex
	clients map[string]hostagentv1connect.HostAgentClient
}

// New returns a pool whose clients present secret.
func New(secret string) *Pool {
	return &Pool{secret: secret, hc: agentapi.NewHTTPClient(), clients: map[string]hostagentv1connect.HostAgentClient{}}
}

// Client returns the client for the agent at address.
func (p *Pool) Client(address string) hostagentv1connect.HostAgentClient {
	p.mu.Lock()
	defer p.mu.Unlock()
	c, ok := p.clients[address]
	if !ok {
		// Sandbox output is mostly terminal text or already-compressed
		// files; gzip on a data-centre link costs more CPU than it saves
		// (it halved terminal throughput), so responses are not compressed.
		c = agentapi.NewClient(p.hc, address, p.secret, connect.WithAcceptCompression("gzip", nil, nil))
		p.clients[address] = c
	}
	return c
}

// Close closes idle connections. Clients keep working (they reconnect).
func (p *Pool) Close() { p.hc.CloseIdleConnections() }
