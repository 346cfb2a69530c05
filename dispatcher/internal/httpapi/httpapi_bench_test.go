package httpapi

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/imgate/imgate/dispatcher/internal/balance"
)

func BenchmarkEndpoint(b *testing.B) {
	nodes := make([]balance.Candidate, 100)
	for i := range nodes {
		nodes[i] = balance.Candidate{ID: fmt.Sprintf("n%d", i), Region: fmt.Sprintf("r%d", i%3)}
	}
	f := newFixture(b, nodes...)
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
