package fcfake

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
)

// The request bodies as Firecracker's API server deserialises them. They
// are declared here, independently of the client in the parent package, so
// that a wrong JSON tag in the client is caught by the fake instead of being
// mirrored by it. Every field is a pointer so that a missing required field
// can be told from a zero value.

type wireBootSource struct {
	KernelImagePath *string `json:"kernel_image_path"`
	BootArgs        *string `json:"boot_args"`
	InitrdPath      *string `json:"initrd_path"`
}

type wireTokenBucket struct {
	Size         *int64 `json:"size"`
	OneTimeBurst *int64 `json:"one_time_burst"`
	RefillTime   *int64 `json:"refill_time"`
}

type wireRateLimiter struct {
	Bandwidth *wireTokenBucket `json:"bandwidth"`
	Ops       *wireTokenBucket `json:"ops"`
}

type wireDrive struct {
	DriveID      *string          `json:"drive_id"`
	PartUUID     *string          `json:"partuuid"`
	IsRootDevice *bool            `json:"is_root_device"`
	CacheType    *string          `json:"cache_type"`
	IsReadOnly   *bool            `json:"is_read_only"`
	PathOnHost   *string          `json:"path_on_host"`
	RateLimiter  *wireRateLimiter `json:"rate_limiter"`
	IOEngine     *string          `json:"io_engine"`
	Socket       *string          `json:"socket"`
}

type wireMachineConfig struct {
	VCPUCount       *int    `json:"vcpu_count"`
	MemSizeMiB      *int    `json:"mem_size_mib"`
	SMT             *bool   `json:"smt"`
	TrackDirtyPages *bool   `json:"track_dirty_pages"`
	HugePages       *string `json:"huge_pages"`
	CPUTemplate     *string `json:"cpu_template"`
}

type wireNetworkInterface struct {
	IfaceID       *string          `json:"iface_id"`
	HostDevName   *string          `json:"host_dev_name"`
	GuestMAC      *string          `json:"guest_mac"`
	MTU           *int             `json:"mtu"`
	RxRateLimiter *wireRateLimiter `json:"rx_rate_limiter"`
	TxRateLimiter *wireRateLimiter `json:"tx_rate_limiter"`
}

type wireMMDSConfig struct {
	Version           *string   `json:"version"`
	NetworkInterfaces *[]string `json:"network_interfaces"`
	IPv4Address       *string   `json:"ipv4_address"`
	IMDSCompat        *bool     `json:"imds_compat"`
}

type wireAction struct {
	ActionType *string `json:"action_type"`
}

type wireVM struct {
	State *string `json:"state"`
}

type wireSnapshotCreate struct {
	SnapshotType *string `json:"snapshot_type"`
	SnapshotPath *string `json:"snapshot_path"`
	MemFilePath  *string `json:"mem_file_path"`
}

type wireMemBackend struct {
	BackendType *string `json:"backend_type"`
	BackendPath *string `json:"backend_path"`
}

type wireNetworkOverride struct {
	IfaceID     *string `json:"iface_id"`
	HostDevName *string `json:"host_dev_name"`
}

type wireVsockOverride struct {
	UDSPath *string `json:"uds_path"`
}

type wireSnapshotLoad struct {
	SnapshotPath        *string               `json:"snapshot_path"`
	MemFilePath         *string               `json:"mem_file_path"`
	MemBackend          *wireMemBackend       `json:"mem_backend"`
	EnableDiffSnapshots *bool                 `json:"enable_diff_snapshots"`
	TrackDirtyPages     *bool                 `json:"track_dirty_pages"`
	ResumeVM            *bool                 `json:"resume_vm"`
	NetworkOverrides    []wireNetworkOverride `json:"network_overrides"`
	VsockOverride       *wireVsockOverride    `json:"vsock_override"`
	ClockRealtime       *bool                 `json:"clock_realtime"`
}

type wireLogger struct {
	LogPath       *string `json:"log_path"`
	Level         *string `json:"level"`
	ShowLevel     *bool   `json:"show_level"`
	ShowLogOrigin *bool   `json:"show_log_origin"`
	Module        *string `json:"module"`
}

type wireMetrics struct {
	MetricsPath *string `json:"metrics_path"`
}

type wireEntropy struct {
	RateLimiter *wireRateLimiter `json:"rate_limiter"`
}

// errDeserialize prefixes every body error the way Firecracker's API server
// does (RequestError::SerdeJson).
const errDeserialize = "An error occurred when deserializing the json body of a request: "

// decodeStrict decodes body into v (a pointer to one of the wire structs)
// and rejects what serde with deny_unknown_fields rejects: unknown or
// differently cased keys, trailing data and wrongly typed values. The
// returned error's text is the fault message.
func decodeStrict(body []byte, v any) error {
	var raw json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&raw); err != nil {
		return errors.New(errDeserialize + jsonErrText(err) + ".")
	}
	if dec.More() {
		return errors.New(errDeserialize + "trailing characters.")
	}
	if err := checkKeys(raw, reflect.TypeOf(v).Elem()); err != nil {
		return errors.New(errDeserialize + err.Error() + ".")
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return errors.New(errDeserialize + jsonErrText(err) + ".")
	}
	return nil
}

func jsonErrText(err error) string {
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) {
		return fmt.Sprintf("invalid type: %s, expected %s for field `%s`", typeErr.Value, typeErr.Type, typeErr.Field)
	}
	return strings.TrimPrefix(err.Error(), "json: ")
}

// checkKeys walks raw against the struct type t and reports the first key
// that names no field exactly (Go's decoder matches case-insensitively,
// serde does not).
func checkKeys(raw json.RawMessage, t reflect.Type) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Struct:
		if bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
			return nil
		}
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(raw, &obj); err != nil {
			return fmt.Errorf("invalid type: expected struct %s", t.Name())
		}
		fields := map[string]reflect.Type{}
		var names []string
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			fields[name] = f.Type
			names = append(names, "`"+name+"`")
		}
		keys := make([]string, 0, len(obj))
		for k := range obj {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			ft, ok := fields[k]
			if !ok {
				return fmt.Errorf("unknown field `%s`, expected one of %s", k, strings.Join(names, ", "))
			}
			if err := checkKeys(obj[k], ft); err != nil {
				return err
			}
		}
	case reflect.Slice:
		if t.Elem().Kind() != reflect.Struct {
			return nil
		}
		var items []json.RawMessage
		if err := json.Unmarshal(raw, &items); err != nil {
			return nil // the typed decode reports the type error
		}
		for _, it := range items {
			if err := checkKeys(it, t.Elem()); err != nil {
				return err
			}
		}
	}
	return nil
}

// missing is serde's text for an absent required field.
func missing(field string) error {
	return errors.New(errDeserialize + "missing field `" + field + "`.")
}

// variant checks an enum value the way serde reports a bad one.
func variant(field, got string, allowed ...string) error {
	for _, a := range allowed {
		if got == a {
			return nil
		}
	}
	return fmt.Errorf("%sunknown variant `%s`, expected one of `%s` for field `%s`.",
		errDeserialize, got, strings.Join(allowed, "`, `"), field)
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}
