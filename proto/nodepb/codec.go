package nodepb

import (
	"fmt"

	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/proto" // registered first: the codec below wraps it
	"google.golang.org/grpc/mem"
)

// The Forward streams between access nodes carry every cross-node message
// (a ForwardBatch of them at a time), so their batches are encoded with the
// generated, reflection-free code (node_vtproto.pb.go, from vtprotobuf)
// instead of the protobuf runtime. The bytes are the same protobuf
// encoding, so nodes of either build talk to each other. Every other
// message, in every gRPC client and server of the process (etcd's
// included), goes to gRPC's own proto codec as before.
//
// ForwardBatch is only ever sent by another access node, authenticated by
// mutual TLS in production; unlike the runtime, the generated decoder does
// not check that strings are UTF-8. Input from clients and backends is
// checked where it enters (proto/wire, and gRPC's codec for Push).
func init() {
	encoding.RegisterCodecV2(forwardCodec{base: encoding.GetCodecV2("proto")})
}

type forwardCodec struct{ base encoding.CodecV2 }

func (c forwardCodec) Name() string { return "proto" }

func (c forwardCodec) Marshal(v any) (mem.BufferSlice, error) {
	b, ok := v.(*ForwardBatch)
	if !ok {
		return c.base.Marshal(v)
	}
	size := b.SizeVT()
	if mem.IsBelowBufferPoolingThreshold(size) {
		buf := make([]byte, size)
		if _, err := b.MarshalToSizedBufferVT(buf); err != nil {
			return nil, fmt.Errorf("nodepb: marshal ForwardBatch: %w", err)
		}
		return mem.BufferSlice{mem.SliceBuffer(buf)}, nil
	}
	pool := mem.DefaultBufferPool()
	buf := pool.Get(size)
	if _, err := b.MarshalToSizedBufferVT((*buf)[:size]); err != nil {
		pool.Put(buf)
		return nil, fmt.Errorf("nodepb: marshal ForwardBatch: %w", err)
	}
	return mem.BufferSlice{mem.NewBuffer(buf, pool)}, nil
}

func (c forwardCodec) Unmarshal(data mem.BufferSlice, v any) error {
	b, ok := v.(*ForwardBatch)
	if !ok {
		return c.base.Unmarshal(data, v)
	}
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	// The generated decoder copies strings and bytes out of buf.
	b.Reset()
	return b.UnmarshalVT(buf.ReadOnlyData())
}
