package envd_test

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"

	fspb "wrenn.dev/wrenn/internal/gen/filesystem"
	processpb "wrenn.dev/wrenn/internal/gen/process"
)

// TestWireContractMatchesE2BSDK checks our process and filesystem protos
// against the file descriptors the real e2b npm SDK embeds in its generated
// client: every message, field (name, number, type, label, oneof), enum
// value, method and streaming mode must be identical. The SDK is installed
// by `make tools` (tools/package.json pins its version).
func TestWireContractMatchesE2BSDK(t *testing.T) {
	sdk := sdkDescriptors(t)
	for _, fd := range []protoreflect.FileDescriptor{processpb.File_process_process_proto, fspb.File_filesystem_filesystem_proto} {
		ours := protodesc.ToFileDescriptorProto(fd)
		theirs, ok := sdk[ours.GetName()]
		if !ok {
			t.Errorf("the e2b SDK embeds no descriptor named %s", ours.GetName())
			continue
		}
		if ours.GetPackage() != theirs.GetPackage() {
			t.Errorf("%s: package %q, SDK has %q", ours.GetName(), ours.GetPackage(), theirs.GetPackage())
		}
		normalize(ours)
		normalize(theirs)
		for _, m := range theirs.MessageType {
			if got := findMessage(ours.MessageType, m.GetName()); got == nil {
				t.Errorf("%s: message %s missing", ours.GetName(), m.GetName())
			} else if !proto.Equal(got, m) {
				t.Errorf("%s: message %s differs:\n ours: %v\n  SDK: %v", ours.GetName(), m.GetName(), got, m)
			}
		}
		if len(ours.MessageType) != len(theirs.MessageType) {
			t.Errorf("%s: %d messages, SDK has %d", ours.GetName(), len(ours.MessageType), len(theirs.MessageType))
		}
		for _, e := range theirs.EnumType {
			var got *descriptorpb.EnumDescriptorProto
			for _, o := range ours.EnumType {
				if o.GetName() == e.GetName() {
					got = o
				}
			}
			if got == nil || !proto.Equal(got, e) {
				t.Errorf("%s: enum %s differs:\n ours: %v\n  SDK: %v", ours.GetName(), e.GetName(), got, e)
			}
		}
		if len(ours.Service) != 1 || len(theirs.Service) != 1 || !proto.Equal(ours.Service[0], theirs.Service[0]) {
			t.Errorf("%s: service differs:\n ours: %v\n  SDK: %v", ours.GetName(), ours.Service, theirs.Service)
		}
	}
}

func findMessage(ms []*descriptorpb.DescriptorProto, name string) *descriptorpb.DescriptorProto {
	for _, m := range ms {
		if m.GetName() == name {
			return m
		}
	}
	return nil
}

// normalize drops what does not travel on the wire: options, source info,
// JSON names left at their default, and declaration order of messages.
func normalize(fd *descriptorpb.FileDescriptorProto) {
	fd.Options = nil
	fd.SourceCodeInfo = nil
	var walk func(ms []*descriptorpb.DescriptorProto)
	walk = func(ms []*descriptorpb.DescriptorProto) {
		for _, m := range ms {
			m.Options = nil
			for _, f := range m.Field {
				f.JsonName = nil
				f.Options = nil
			}
			for _, nested := range m.NestedType {
				if nested.GetOptions().GetMapEntry() {
					nested.Options = &descriptorpb.MessageOptions{MapEntry: proto.Bool(true)}
				}
			}
			walk(m.NestedType)
		}
	}
	walk(fd.MessageType)
	for _, s := range fd.Service {
		s.Options = nil
		for _, m := range s.Method {
			m.Options = nil
		}
	}
}

// sdkDescriptors extracts the base64 FileDescriptorProtos from the SDK bundle.
func sdkDescriptors(t *testing.T) map[string]*descriptorpb.FileDescriptorProto {
	t.Helper()
	_, here, _, _ := runtime.Caller(0)
	bundle := filepath.Join(filepath.Dir(here), "..", "..", "tools", "node_modules", "e2b", "dist", "index.js")
	src, err := os.ReadFile(bundle)
	if err != nil {
		t.Fatalf("read the e2b SDK bundle (run `make tools` to install it): %v", err)
	}
	re := regexp.MustCompile(`fileDesc\)?\("([A-Za-z0-9+/=]+)"`)
	out := map[string]*descriptorpb.FileDescriptorProto{}
	for _, m := range re.FindAllSubmatch(src, -1) {
		raw, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(string(m[1]), "="))
		if err != nil {
			t.Fatalf("decode an SDK descriptor: %v", err)
		}
		var fd descriptorpb.FileDescriptorProto
		if err := proto.Unmarshal(raw, &fd); err != nil {
			t.Fatalf("unmarshal an SDK descriptor: %v", err)
		}
		out[fd.GetName()] = &fd
	}
	if len(out) < 2 {
		t.Fatalf("found %d descriptors in %s, want the process and filesystem ones", len(out), bundle)
	}
	return out
}
