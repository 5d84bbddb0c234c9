package agentcmd

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"wrenn.dev/wrenn/internal/client"
	"wrenn.dev/wrenn/internal/errdefs"
)

// registerRetry is the longest wait between registration attempts.
const registerRetry = 30 * time.Second

// advertised is the address the control plane should call: cfg's, or the
// listener's when it names a host.
func advertised(cfg Config, addr net.Addr) (string, error) {
	if cfg.AdvertiseURL != "" {
		return strings.TrimSuffix(cfg.AdvertiseURL, "/"), nil
	}
	tcp, ok := addr.(*net.TCPAddr)
	if !ok || tcp.IP.IsUnspecified() {
		return "", errdefs.InvalidArgument("-control-url needs -advertise-url when the agent listens on all addresses (%s)", addr)
	}
	return "http://" + addr.String(), nil
}

// register registers this agent with the control plane at cfg.ControlURL,
// retrying with backoff until it succeeds or ctx ends. The control plane
// calls the agent back to check it, so this runs once the API serves.
func register(ctx context.Context, cfg Config, address string, log *slog.Logger) {
	key := cfg.ControlKey
	if cfg.ControlKeyFile != "" {
		b, err := os.ReadFile(cfg.ControlKeyFile)
		if err != nil {
			log.Error("cannot register with the control plane: reading the key", logKeyErr, err)
			return
		}
		key = strings.TrimSpace(string(b))
	}
	c, err := client.New(cfg.ControlURL, key)
	if err != nil {
		log.Error("cannot register with the control plane", logKeyErr, err)
		return
	}
	wait := time.Second
	for {
		h, err := c.RegisterHost(ctx, address)
		if err == nil {
			log.Info("registered with the control plane", "control_url", cfg.ControlURL, "host_id", h.ID, "address", address)
			return
		}
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errdefs.ErrUnauthenticated) || errors.Is(err, errdefs.ErrPermissionDenied) {
			log.Error("the control plane refused the registration key (it needs an admin API key)", logKeyErr, err)
			return
		}
		log.Warn("registering with the control plane failed; retrying", logKeyErr, err, "in", wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		wait = min(2*wait, registerRetry)
	}
}
