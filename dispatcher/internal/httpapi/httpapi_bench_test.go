package httpapi

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/imgate/imgate/dispatcher/internal/balance"
)

func benchNodes() []balance.Candidate {
	nodes := make([]balance.Candidate, 100)
	for i := range nodes {
		nodes[i] = balance.Candidate{ID: fmt.Sprintf("n%d", i), Region: fmt.Sprintf("r%d", i%3)}
	}
	return nodes
}

// BenchmarkEndpoint is the handler alone (no network): parse, pick, sign,
// encode.
func BenchmarkEndpoint(b *testing.B) {
	f := newFixture(b, benchNodes()...)
	r := httptest.NewRequest(http.MethodGet, "/v1/endpoint?uid=user-123456&device=phone&region=r1&exclude=n1,n2", nil)
	b.ReportAllocs()
	for b.Loop() {
		w := httptest.NewRecorder()
		f.srv.ServeHTTP(w, r)
		if w.Code != http.StatusOK {
			b.Fatal(w.Code, w.Body)
		}
	}
}

// BenchmarkEndpointHTTP compares, in one run, GET /v1/endpoint over real
// loopback HTTP (keep-alive, parallel clients) with a bare net/http handler
// that returns a fixed JSON body of the same size: the cost of picking and
// signing on top of serving HTTP at all. Compare the two ns/op (or req/s):
// the goal is endpoint ≥ 0.7 × bare.
func BenchmarkEndpointHTTP(b *testing.B) {
	f := newFixture(b, benchNodes()...)
	const query = "/v1/endpoint?uid=user-123456&device=phone&region=r1&exclude=n1,n2"
	w := httptest.NewRecorder()
	f.srv.ServeHTTP(w, httptest.NewRequest(http.MethodGet, query, nil))
	fixed := w.Body.Bytes()
	bare := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		_, _ = w.Write(fixed)
	})
	for _, c := range []struct {
		name string
		h    http.Handler
	}{{"bare", bare}, {"endpoint", f.srv}} {
		b.Run(c.name, func(b *testing.B) {
			ts := httptest.NewServer(c.h)
			defer ts.Close()
			tr := &http.Transport{MaxIdleConnsPerHost: 64}
			defer tr.CloseIdleConnections()
			hc := &http.Client{Transport: tr}
			url := ts.URL + query
			b.SetParallelism(4) // 4 × GOMAXPROCS client goroutines
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					resp, err := hc.Get(url)
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						b.Errorf("status %d", resp.StatusCode)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
		})
	}
}
