// Command fleet is the TypeScript SDK tests' harness: it starts a real
// embedded etcd, the real dispatcher and N real access nodes (each with a
// WebSocket listener), all on 127.0.0.1 with ports picked by the kernel,
// waits until the dispatcher finds every node eligible, and prints one JSON
// line describing the fleet on stdout. It then reads commands from stdin,
// one a line, and answers each with one JSON line:
//
//	state <node> <active|drain|down|backup>  put the node's ops state in etcd and
//	                                         wait until the dispatcher agrees
//	term <node>                              SIGTERM the node (it drains)
//	wait-exit <node>                         wait until the node's process exited
//	eligible                                 the ids the dispatcher finds eligible
//	kick <node> <uid> [device]               NodeService.Kick on the node (Kick ADMIN);
//	                                         answers {"ok":true,"kicked":n}
//
// On stdin EOF (the test runner finished or died) or SIGTERM it stops every
// process it started, by pid, and etcd. The children also get SIGKILL from
// the kernel should this process die first (Pdeathsig), so a crashed test
// leaves nothing behind.
package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/imgate/imgate/proto/etcdkeys"
	"github.com/imgate/imgate/proto/nodepb"
	"github.com/imgate/imgate/scripts/devetcd"
)

type proc struct {
	id   string
	cmd  *exec.Cmd
	done chan struct{}
	log  string
}

// PushToken is the dispatcher's --push-token: tests use it for the
// backend routes (POST /v1/kick).
const PushToken = "ts-fleet-push-token"

type nodeInfo struct {
	PID int    `json:"pid"`
	Log string `json:"log"`
}

type fleetInfo struct {
	Dispatcher string              `json:"dispatcher"`
	Etcd       string              `json:"etcd"`
	PID        int                 `json:"pid"`
	Nodes      map[string]nodeInfo `json:"nodes"`
	CA         string              `json:"ca,omitempty"` // --wss: the CA's PEM file
}

func main() {
	bin := flag.String("bin", "", "directory holding the dispatcher and accessnode binaries")
	dir := flag.String("dir", "", "directory for etcd data and logs")
	nodes := flag.Int("nodes", 2, "access nodes")
	nodeArgs := flag.String("node-args", "", "extra flags for every node, space-separated")
	ws := flag.Bool("ws", true, "give every node a WebSocket listener")
	wss := flag.Bool("wss", false, "also give every node a wss listener, with a certificate of a CA made for this run (its PEM file: \"ca\" in the JSON line)")
	web := flag.Bool("web", false, "serve the chat page (dispatcher --chat-page) and let its origin open WebSockets on the nodes (--ws-allowed-origins)")
	flag.Parse()
	if *bin == "" || *dir == "" {
		fmt.Fprintln(os.Stderr, "fleet: --bin and --dir are required")
		os.Exit(2)
	}
	if err := run(*bin, *dir, *nodes, *ws, *wss, *web, strings.Fields(*nodeArgs)); err != nil {
		fmt.Fprintln(os.Stderr, "fleet:", err)
		os.Exit(1)
	}
}

func run(bin, dir string, n int, ws, wss, web bool, extra []string) error {
	e, err := devetcd.Start(filepath.Join(dir, "etcd"), "127.0.0.1:0", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer e.Close()
	endpoint := strings.TrimPrefix(e.Endpoint, "http://")
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second})
	if err != nil {
		return err
	}
	defer cli.Close()

	var procs []*proc
	defer func() { stopAll(procs) }()
	httpAddr, err := freeAddr()
	if err != nil {
		return err
	}
	dargs := []string{bin + "/dispatcher", "--http-addr", httpAddr, "--etcd-endpoints", endpoint,
		"--pull-interval", "200ms", "--rate-limit-per-ip", "0", "--log-level", "debug", "--push-token", PushToken}
	if web {
		dargs = append(dargs, "--chat-page")
	}
	d, err := spawn(dir, "dispatcher", dargs...)
	if err != nil {
		return err
	}
	procs = append(procs, d)
	info := fleetInfo{Dispatcher: "http://" + httpAddr, Etcd: endpoint, PID: os.Getpid(), Nodes: map[string]nodeInfo{}}
	byID := map[string]*proc{}
	var tlsArgs []string
	if wss {
		ca, cert, key, err := writeCerts(dir)
		if err != nil {
			return err
		}
		info.CA = ca
		tlsArgs = []string{"--wss-addr", "127.0.0.1:0", "--tls-cert", cert, "--tls-key", key}
	}
	for i := 1; i <= n; i++ {
		id := fmt.Sprintf("node-%d", i)
		args := append([]string{bin + "/accessnode", "--id", id,
			"--client-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
			"--etcd-endpoints", endpoint, "--region", "a",
			"--lease-ttl", "2s", "--sweep-interval", "100ms", "--deliver-retry", "300ms",
			"--drain-timeout", "10s", "--log-level", "debug"}, extra...)
		if ws {
			args = append(args, "--ws-addr", "127.0.0.1:0")
		}
		if web {
			args = append(args, "--ws-allowed-origins", "http://"+httpAddr)
		}
		args = append(args, tlsArgs...)
		p, err := spawn(dir, id, args...)
		if err != nil {
			return err
		}
		procs = append(procs, p)
		byID[id] = p
		info.Nodes[id] = nodeInfo{PID: p.cmd.Process.Pid, Log: p.log}
	}
	base := info.Dispatcher
	deadline := time.Now().Add(60 * time.Second)
	for len(eligible(base)) < n {
		if time.Now().After(deadline) {
			return errors.New("not every node eligible at the dispatcher within 60 s")
		}
		for _, p := range procs {
			select {
			case <-p.done:
				return fmt.Errorf("%s exited during start; see %s", p.id, p.log)
			default:
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	out := json.NewEncoder(os.Stdout)
	if err := out.Encode(info); err != nil {
		return err
	}

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	keys := etcdkeys.New(etcdkeys.DefaultPrefix)
	for {
		var line string
		var ok bool
		select {
		case <-sig:
			return nil
		case line, ok = <-lines:
			if !ok {
				return nil
			}
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		reply := map[string]any{"ok": true}
		fail := func(err error) { reply = map[string]any{"ok": false, "error": err.Error()} }
		p := (*proc)(nil)
		if len(f) > 1 {
			p = byID[f[1]]
		}
		switch {
		case f[0] == "state" && len(f) == 3 && p != nil:
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_, err := cli.Put(ctx, keys.NodeConfig(f[1], etcdkeys.FieldState), f[2])
			cancel()
			if err != nil {
				fail(err)
				break
			}
			want := f[2] == "active"
			deadline := time.Now().Add(20 * time.Second)
			for slices.Contains(eligible(base), f[1]) != want {
				if time.Now().After(deadline) {
					fail(errors.New("the dispatcher did not take the new state within 20 s"))
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
		case f[0] == "term" && p != nil:
			if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
				fail(err)
			}
		case f[0] == "wait-exit" && p != nil:
			select {
			case <-p.done:
			case <-time.After(30 * time.Second):
				fail(errors.New("still running after 30 s"))
			}
		case f[0] == "eligible":
			reply["ids"] = eligible(base)
		case f[0] == "kick" && (len(f) == 3 || len(f) == 4) && p != nil:
			device := ""
			if len(f) == 4 {
				device = f[3]
			}
			n, err := kick(cli, keys, f[1], f[2], device)
			if err != nil {
				fail(err)
				break
			}
			reply["kicked"] = n
		default:
			fail(fmt.Errorf("unknown command %q", line))
		}
		if err := out.Encode(reply); err != nil {
			return err
		}
	}
}

// kick calls NodeService.Kick on node id, found by its registration.
func kick(cli *clientv3.Client, keys etcdkeys.Schema, id, uid, device string) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, keys.Node(id))
	if err != nil {
		return 0, err
	}
	if len(resp.Kvs) == 0 {
		return 0, fmt.Errorf("%s is not registered", id)
	}
	var reg etcdkeys.Registration
	if err := json.Unmarshal(resp.Kvs[0].Value, &reg); err != nil {
		return 0, err
	}
	conn, err := grpc.NewClient(reg.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	r, err := nodepb.NewNodeServiceClient(conn).Kick(ctx, &nodepb.KickRequest{Uid: uid, Device: device, Detail: "fleet test"})
	if err != nil {
		return 0, err
	}
	return int(r.GetKicked()), nil
}

// writeCerts makes a CA and a server certificate it signs for 127.0.0.1
// and localhost, as PEM files in dir.
func writeCerts(dir string) (caFile, certFile, keyFile string, err error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", "", err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "imgate fleet test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return "", "", "", err
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", "", err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "node"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return "", "", "", err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return "", "", "", err
	}
	caFile, certFile, keyFile = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "node.pem"), filepath.Join(dir, "node-key.pem")
	for _, f := range []struct {
		path, typ string
		der       []byte
	}{{caFile, "CERTIFICATE", caDER}, {certFile, "CERTIFICATE", der}, {keyFile, "EC PRIVATE KEY", keyDER}} {
		if err := os.WriteFile(f.path, pem.EncodeToMemory(&pem.Block{Type: f.typ, Bytes: f.der}), 0o600); err != nil {
			return "", "", "", err
		}
	}
	return caFile, certFile, keyFile, nil
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func spawn(dir, id string, argv ...string) (*proc, error) {
	logPath := filepath.Join(dir, id+".log")
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", id, err)
	}
	p := &proc{id: id, cmd: cmd, done: make(chan struct{}), log: logPath}
	go func() {
		cmd.Wait()
		lf.Close()
		close(p.done)
	}()
	return p, nil
}

// stopAll sends SIGTERM to every process still running, waits a little for
// them, then kills the rest — each by its own pid.
func stopAll(procs []*proc) {
	for _, p := range procs {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, p := range procs {
		select {
		case <-p.done:
		case <-time.After(time.Until(deadline)):
			p.cmd.Process.Kill()
			<-p.done
		}
	}
}

func eligible(base string) []string {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(base + "/v1/nodes")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var v struct {
		Nodes []struct {
			ID       string `json:"id"`
			Eligible bool   `json:"eligible"`
		} `json:"nodes"`
	}
	if json.NewDecoder(resp.Body).Decode(&v) != nil {
		return nil
	}
	ids := []string{}
	for _, n := range v.Nodes {
		if n.Eligible {
			ids = append(ids, n.ID)
		}
	}
	return ids
}
