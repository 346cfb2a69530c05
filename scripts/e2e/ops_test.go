package e2e

import (
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
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
	// The dispatcher is configured by a file, an environment variable
	// overriding one of its keys; the node by flags.
	conf := filepath.Join(t.TempDir(), "dispatcher.yaml")
	yaml := "http-addr: 127.0.0.1:1\netcd-endpoints: [" + endpoint + "]\npull-interval: 200ms\n"
	if err := os.WriteFile(conf, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	disp := exec.Command(bin+"/dispatcher", "--config", conf)
	disp.Env = append(os.Environ(), "IMGATE_HTTP_ADDR="+dispHTTP)
	startCmd(t, "dispatcher", disp)
	start(t, "node-1", bin+"/accessnode", "--id", "node-1", "--client-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0",
		"--http-addr", nodeHTTP, "--etcd-endpoints", endpoint)
	want := `imgate_build_info{goversion="` + runtime.Version() + `",version="` + version + `"} 1`
	for _, url := range []string{"http://" + dispHTTP + "/metrics", "http://" + nodeHTTP + "/metrics"} {
		waitFor(t, want+" on "+url, 30*time.Second, func() bool {
			code, body := httpGet(url)
			return code == http.StatusOK && strings.Contains(body, want)
		})
	}

	// A bad key stops the start with exit code 2 and a line naming it.
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("drain-timeout: 30s\ndrian-rate: 10\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin+"/accessnode", "--config", bad).CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 2 || !strings.Contains(string(out), `line 2: key "drian-rate": unknown key`) {
		t.Fatalf("bad config: %v %q", err, out)
	}
}
