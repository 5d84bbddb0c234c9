// Package errconnect maps errdefs classes to Connect codes and back. It is
// the only place that mapping lives.
package errconnect

import (
	"context"
	"errors"

	"connectrpc.com/connect"

	"wrenn.dev/wrenn/internal/errdefs"
)

var codes = []struct {
	class error
	code  connect.Code
}{
	{errdefs.ErrInvalidArgument, connect.CodeInvalidArgument},
	{errdefs.ErrNotFound, connect.CodeNotFound},
	{errdefs.ErrAlreadyExists, connect.CodeAlreadyExists},
	{errdefs.ErrConflict, connect.CodeAborted},
	{errdefs.ErrFailedPrecondition, connect.CodeFailedPrecondition},
	{errdefs.ErrUnauthenticated, connect.CodeUnauthenticated},
	{errdefs.ErrPermissionDenied, connect.CodePermissionDenied},
	{errdefs.ErrResourceExhausted, connect.CodeResourceExhausted},
	{errdefs.ErrUnavailable, connect.CodeUnavailable},
	{errdefs.ErrNotImplemented, connect.CodeUnimplemented},
	{errdefs.ErrDeadlineExceeded, connect.CodeDeadlineExceeded},
	{errdefs.ErrCanceled, connect.CodeCanceled},
	// After ErrResourceExhausted, so the code maps back to that class.
	{errdefs.ErrTooLarge, connect.CodeResourceExhausted},
}

// ToConnect converts err into a *connect.Error with the code of its class.
// Unclassified errors become CodeInternal with a fixed message, so internal
// details never reach a client; a context error keeps its meaning.
func ToConnect(err error) error {
	if err == nil {
		return nil
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		return ce
	}
	for _, c := range codes {
		if errors.Is(err, c.class) {
			return connect.NewError(c.code, errors.New(err.Error()))
		}
	}
	switch {
	case errors.Is(err, context.Canceled):
		return connect.NewError(connect.CodeCanceled, err)
	case errors.Is(err, context.DeadlineExceeded):
		return connect.NewError(connect.CodeDeadlineExceeded, err)
	}
	return connect.NewError(connect.CodeInternal, errors.New("internal error"))
}

// FromConnect converts a Connect error received from a peer back into an
// errdefs class, keeping the peer's message.
func FromConnect(err error) error {
	if err == nil {
		return nil
	}
	code := connect.CodeOf(err)
	msg := err.Error()
	var ce *connect.Error
	if errors.As(err, &ce) {
		msg = ce.Message()
	}
	for _, c := range codes {
		if c.code == code {
			return &peerError{class: c.class, msg: msg}
		}
	}
	return err
}

type peerError struct {
	class error
	msg   string
}

func (e *peerError) Error() string { return e.msg }
func (e *peerError) Unwrap() error { return e.class }
