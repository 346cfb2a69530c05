package e2e

import (
	"io"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/imgate/imgate/scripts/devetcd"
)

// buildVersioned builds both binaries as the Makefile does, with
// -X main.version=version.
func buildVersioned(t *testing.T, version string) string {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-ldflags", "-X main.version="+version, "-o", dir+"/",
		"github.com/imgate/imgate/dispatcher", "github.com/imgate/imgate/accessnode")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return dir
}

func httpGet(url string) (int, string) {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestVersionAndBuildInfo: --version prints the linked version and the Go
// version and exits 0; both binaries' /metrics carry imgate_build_info
// with the same labels.
func TestVersionAndBuildInfo(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: builds and starts the binaries")
	}
	const version = "v0.0.0-e2e"
	bin := buildVersioned(t, version)
	for _, name := range []string{"dispatcher", "accessnode"} {
		out, err := exec.Command(bin+"/"+name, "--version").Output()
		if want := name + " " + version + " " + runtime.Version() + "\n"; err != nil || string(out) != want {
			t.Fatalf("%s --version: %q %v, want %q", name, out, err, want)
		}
	}

	e, err := devetcd.Start(t.TempDir(), "127.0.0.1:0", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	endpoint := strings.TrimPrefix(e.Endpoint, "http://")
	dispHTTP, nodeHTTP := freeAddr(t), freeAddr(t)
	start(t, "dispatcher", bin+"/dispatcher", "--http-addr", dispHTTP, "--etcd-endpoints", endpoint)
	start(t, "node-1", bin+"/accessnode", "--id", "node-1", "--client-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0",
		"--http-addr", nodeHTTP, "--etcd-endpoints", endpoint)
	want := `imgate_build_info{goversion="` + runtime.Version() + `",version="` + version + `"} 1`
	for _, url := range []string{"http://" + dispHTTP + "/metrics", "http://" + nodeHTTP + "/metrics"} {
		waitFor(t, want+" on "+url, 30*time.Second, func() bool {
			code, body := httpGet(url)
			return code == http.StatusOK && strings.Contains(body, want)
		})
	}
}
