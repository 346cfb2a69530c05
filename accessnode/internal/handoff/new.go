//go:build linux

package handoff

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/imgate/imgate/accessnode/internal/evloop"
	"github.com/imgate/imgate/accessnode/internal/gateway"
	"github.com/imgate/imgate/accessnode/internal/sdnotify"
)

// Inherited is the new process's side of an upgrade: nil when the process
// was started normally (every method then does what a normal start does).
type Inherited struct {
	ch       *channel
	lns      map[string]*os.File
	commitAt time.Time // when the commit came: from then on the clients wait for Finish
	started  int64     // the node's registered start, from the old process
	version  string
	log      zerolog.Logger
}

// Inherit connects to the old process when this one was started by an
// upgrade, says hello and receives the listening sockets. It returns nil,
// nil for a normal start.
func Inherit(version string, log zerolog.Logger) (*Inherited, error) {
	// SIGUSR2's default action ends the process: one that arrives before
	// Old.Watch listens (during start-up, or during this take-over) must
	// not kill the node. It is dropped; Watch's own channel takes the next.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGUSR2)
	v := os.Getenv(envFD)
	if v == "" {
		return nil, nil
	}
	os.Unsetenv(envFD) // not for a process this one starts
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return nil, fmt.Errorf("handoff: %s=%q", envFD, v)
	}
	f := os.NewFile(uintptr(fd), "handoff")
	fc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("handoff: %w", err)
	}
	in := &Inherited{ch: newChannel(fc.(*net.UnixConn)), lns: map[string]*os.File{}, version: version, log: log}
	if err := in.ch.send(&message{Type: msgHello, PID: os.Getpid(), Version: version, Protocol: protocolVersion}, nil); err != nil {
		in.ch.close()
		return nil, err
	}
	m, fds, err := in.ch.recv(time.Now().Add(30 * time.Second))
	if err == nil && m.Type != msgListeners {
		err = fmt.Errorf("handoff: got %s, want listeners", m.Type)
	}
	if err != nil {
		in.ch.close()
		return nil, err
	}
	for i, name := range m.Names {
		in.lns[name] = os.NewFile(uintptr(fds[i]), name)
	}
	in.started = m.Started
	log.Info().Strs("listeners", m.Names).Msg("upgrade: listening sockets inherited from the old process")
	return in, nil
}

// StartedAt is the start the node registers (Unix ms): the old process's
// after an upgrade in place, else this process's.
func (in *Inherited) StartedAt(started time.Time) int64 {
	if in != nil && in.started > 0 {
		return in.started
	}
	return started.UnixMilli()
}

// Listen returns the inherited listener name, or listens on addr.
func (in *Inherited) Listen(name, addr string) (net.Listener, error) {
	if in != nil {
		if f := in.lns[name]; f != nil {
			delete(in.lns, name)
			defer f.Close() // FileListener dups it
			return net.FileListener(f)
		}
	}
	return net.Listen("tcp", addr)
}

// TakeOver receives the connections and adopts them into gw once the old
// process commits. health runs first: its error makes the old process keep
// everything. Until Finish, gw holds (no Send is processed) and nothing is
// registered or served. An error means this process must exit: the old
// one keeps (or takes back) everything.
func (in *Inherited) TakeOver(ctx context.Context, gw *gateway.Server, health func(context.Context) error) error {
	if in == nil {
		return nil
	}
	for name, f := range in.lns { // listeners this version does not serve
		in.log.Warn().Str("listener", name).Msg("upgrade: inherited listener not used")
		f.Close()
	}
	gw.Hold()
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err := health(hctx)
	cancel()
	if err != nil {
		_ = in.ch.send(&message{Type: msgAbort, Error: "health: " + err.Error()}, nil)
		return fmt.Errorf("upgrade: health check: %w", err)
	}
	if err := in.ch.send(&message{Type: msgReady, PID: os.Getpid(), Version: in.version}, nil); err != nil {
		return err
	}
	type pending struct {
		d  evloop.Detached
		st gateway.ConnState
	}
	var conns []pending
	closeAll := func() {
		for _, p := range conns {
			unix.Close(p.d.FD)
		}
	}
	for {
		// The old process sets the pace and the deadline; a silent one
		// that stays connected is waited for, one that goes away ends it.
		m, fds, err := in.ch.recv(time.Time{})
		if err != nil {
			closeAll()
			return fmt.Errorf("upgrade: %w", err)
		}
		switch m.Type {
		case msgConns:
			for i, r := range m.Conns {
				remote, _ := netip.ParseAddrPort(r.Remote)
				conns = append(conns, pending{d: evloop.Detached{FD: fds[i], Remote: remote, WS: r.WS, WSState: r.WSState,
					In: r.In, Out: r.Out, IdleNs: r.IdleNs, AgeNs: r.AgeNs}, st: r.State})
			}
			continue
		case msgDone:
			if m.Count != len(conns) {
				closeAll()
				return fmt.Errorf("upgrade: old process says %d connections, %d came", m.Count, len(conns))
			}
			if err := in.ch.send(&message{Type: msgAdopted, Count: len(conns)}, nil); err != nil {
				closeAll()
				return err
			}
		case msgAbort:
			closeAll()
			return fmt.Errorf("upgrade: the old process aborted: %s", m.Error)
		default:
			closeAll()
			return fmt.Errorf("upgrade: unexpected %s", m.Type)
		}
		break
	}
	m, _, err := in.ch.recv(time.Time{})
	if err == nil && m.Type != msgCommit {
		err = fmt.Errorf("got %s (%s), want commit", m.Type, m.Error)
	}
	if err != nil {
		closeAll()
		return fmt.Errorf("upgrade: no commit: %w", err)
	}
	in.commitAt = time.Now()
	// Ours now. Adopting only after the commit: until then the old process
	// may take them back, and nothing here may have read or written them.
	ds := make([]evloop.Detached, len(conns))
	sts := make([]gateway.ConnState, len(conns))
	for i, p := range conns {
		ds[i], sts[i] = p.d, p.st
	}
	failed := gw.AdoptSessions(ds, sts, true)
	if failed > 0 {
		in.log.Error().Int("failed", failed).Msg("upgrade: adopting some connections failed; they are closed")
	}
	in.log.Info().Int("conns", len(conns)-failed).Int("failed", failed).Msg("upgrade: connections adopted")
	return nil
}

// Finish ends the hand-off once this process registers and serves: held
// frames are processed, and the old process is told it may exit.
func (in *Inherited) Finish(gw *gateway.Server) {
	if in == nil {
		return
	}
	gw.Resume()
	gw.Release()
	// systemd (Type=notify, NotifyAccess=all) follows this process from
	// now on: told before the old process may exit, whose exit would
	// otherwise end the service.
	if sent, err := sdnotify.Notify(fmt.Sprintf("MAINPID=%d\nREADY=1", os.Getpid())); err != nil {
		in.log.Warn().Err(err).Msg("upgrade: telling systemd the new main pid failed")
	} else if sent {
		in.log.Info().Int("pid", os.Getpid()).Msg("upgrade: told systemd this process is the node's main process")
	}
	if err := in.ch.send(&message{Type: msgTookOver, PID: os.Getpid(), Version: in.version}, nil); err != nil {
		in.log.Warn().Err(err).Msg("upgrade: telling the old process failed")
	}
	in.ch.close()
	// commit_to_serving: the new process's share of the pause its clients
	// saw (the old process logs its share, from its hold to the commit).
	in.log.Info().Dur("commit_to_serving", time.Since(in.commitAt)).Msg("upgrade: took over")
}

// DefaultBinary is the path this process was started from, made absolute:
// a deploy replaces the file there and the upgrade starts what it finds.
func DefaultBinary() string {
	p := os.Args[0]
	if lp, err := exec.LookPath(p); err == nil {
		p = lp
	}
	if abs, err := filepath.Abs(p); err == nil {
		p = abs
	}
	return p
}
