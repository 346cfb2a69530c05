package gateway

import (
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/imgate/imgate/proto/nodepb"
	"github.com/imgate/imgate/proto/wirepb"
)

// fillEveryField sets every field of m to a value of its own (derived from
// the field number), so a copy that forgets one is seen.
func fillEveryField(t *testing.T, m proto.Message) {
	t.Helper()
	r := m.ProtoReflect()
	fields := r.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		n := int64(fd.Number())
		var v protoreflect.Value
		switch {
		case fd.IsList() || fd.IsMap() || fd.Message() != nil:
			t.Fatalf("%s: fill this kind of field (%v) here", fd.FullName(), fd.Kind())
		case fd.Kind() == protoreflect.StringKind:
			v = protoreflect.ValueOfString("value of " + string(fd.Name()))
		case fd.Kind() == protoreflect.BytesKind:
			v = protoreflect.ValueOfBytes([]byte("bytes of " + string(fd.Name())))
		case fd.Kind() == protoreflect.BoolKind:
			v = protoreflect.ValueOfBool(true)
		case fd.Kind() == protoreflect.EnumKind:
			v = protoreflect.ValueOfEnum(protoreflect.EnumNumber(n))
		case fd.Kind() == protoreflect.Int32Kind || fd.Kind() == protoreflect.Sint32Kind || fd.Kind() == protoreflect.Sfixed32Kind:
			v = protoreflect.ValueOfInt32(int32(100 + n))
		case fd.Kind() == protoreflect.Int64Kind || fd.Kind() == protoreflect.Sint64Kind || fd.Kind() == protoreflect.Sfixed64Kind:
			v = protoreflect.ValueOfInt64(1_700_000_000_000 + n)
		case fd.Kind() == protoreflect.Uint32Kind || fd.Kind() == protoreflect.Fixed32Kind:
			v = protoreflect.ValueOfUint32(uint32(100 + n))
		case fd.Kind() == protoreflect.Uint64Kind || fd.Kind() == protoreflect.Fixed64Kind:
			v = protoreflect.ValueOfUint64(uint64(100 + n))
		default:
			t.Fatalf("%s: fill kind %v here", fd.FullName(), fd.Kind())
		}
		r.Set(fd, v)
	}
}

// TestDeliverFieldsSurviveEveryCopy holds every copy of a Deliver (deliver.go)
// to every field of Deliver, whatever frame.proto says today: a field added
// there and not to the copies fails here.
func TestDeliverFieldsSurviveEveryCopy(t *testing.T) {
	d := &wirepb.Deliver{}
	fillEveryField(t, d)
	orig := proto.Clone(d).(*wirepb.Deliver)
	withAttempt := func(n uint32) *wirepb.Deliver {
		w := proto.Clone(orig).(*wirepb.Deliver)
		w.Attempt = n
		return w
	}

	t.Run("re-send", func(t *testing.T) {
		if got := resend(d, 9); !proto.Equal(got, withAttempt(9)) {
			t.Errorf("resend lost a field:\n got %v\nwant %v", got, withAttempt(9))
		}
	})
	t.Run("cross-node hop", func(t *testing.T) {
		// Through the bytes of the Forward stream, as between two nodes.
		b, err := proto.Marshal(ToForward("to-uid", d))
		if err != nil {
			t.Fatal(err)
		}
		var f nodepb.ForwardDeliver
		if err := proto.Unmarshal(b, &f); err != nil {
			t.Fatal(err)
		}
		if f.ToUid != "to-uid" {
			t.Errorf("to_uid %q", f.ToUid)
		}
		// The next node's first transmission: attempt 1, all else as sent.
		if got := FromForward(&f); !proto.Equal(got, withAttempt(1)) {
			t.Errorf("the hop lost a field:\n got %v\nwant %v", got, withAttempt(1))
		}
	})
	t.Run("store", func(t *testing.T) {
		// Every field but attempt (a transmission's, not the message's) is
		// stored, under the same name; so are none of a room message's
		// (only one-to-one messages are stored).
		req := storeRequest("to-uid", d).ProtoReflect()
		dr := d.ProtoReflect()
		fields := dr.Descriptor().Fields()
		for i := range fields.Len() {
			fd := fields.Get(i)
			switch fd.Name() {
			case "attempt", "room", "broadcast":
				continue
			}
			sf := req.Descriptor().Fields().ByName(fd.Name())
			if sf == nil {
				t.Errorf("StoreRequest has no field %s", fd.Name())
				continue
			}
			if !req.Get(sf).Equal(dr.Get(fd)) {
				t.Errorf("StoreRequest.%s = %v, want %v", fd.Name(), req.Get(sf), dr.Get(fd))
			}
		}
		if got := req.Interface().(*nodepb.StoreRequest).ToUid; got != "to-uid" {
			t.Errorf("to_uid %q", got)
		}
	})
	if !proto.Equal(d, orig) {
		t.Error("a copy wrote to the shared Deliver")
	}
}
