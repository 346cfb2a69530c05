//go:build linux

package handoff

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/imgate/imgate/accessnode/internal/evloop"
	"github.com/imgate/imgate/accessnode/internal/gateway"
)

// envFD names the descriptor of the hand-off socket in the new process.
const envFD = "IMGATE_HANDOFF_FD"

// batchSize is how many connections go in one message.
const batchSize = 200

// Listener is a listening socket the old process hands over by name.
type Listener struct {
	Name string
	Ln   *net.TCPListener
}

// Old is the running node's side of an upgrade.
type Old struct {
	Binary    string        // the new binary (the path this one was started from)
	Args      []string      // its arguments: this process's
	Timeout   time.Duration // for the new process to start, answer and take everything
	GW        *gateway.Server
	Listeners []Listener
	// Serve serves the client listeners again after a failed hand-off
	// (Hold stopped the engine accepting).
	Serve func() error
	// Release lets go of the etcd registration without removing it
	// (registry.Registrar.Release), just before the commit.
	Release func()
	// StartedAt is the node's registered start (Unix ms): the new process
	// registers it again, so the dispatcher sees the same node with a new
	// version, not a restart (no slow start, no new health check).
	StartedAt int64
	// Peers is the node's side of its peers' Forward streams (relay.Relay):
	// told before the hold, so the peers keep their calls for the new
	// process instead of sending them here, and at the end. nil: none.
	Peers Peers
	// Refuse, when not empty, is why this node cannot be upgraded in place.
	Refuse string
	Log    zerolog.Logger

	busy atomic.Bool
	done chan struct{}
	// Stats of the last attempt, for the log and tests.
	last Result
}

// Peers is what the hand-off needs from the relay (docs/architecture.md,
// "Between nodes").
type Peers interface {
	// BeginHandoff: from now on no Deliver from a peer reaches a client
	// here; each is answered "moved, send it again", and the peers are
	// told to send their calls to the next process.
	BeginHandoff()
	// EndHandoff: committed, the new process serves (the peers' streams
	// end, and they dial it); else this process keeps the node and the
	// peers carry on.
	EndHandoff(committed bool)
}

// Result is what one upgrade attempt did.
type Result struct {
	NewPID     int
	Conns      int           // connections handed over
	Batches    int           // messages they took
	Pause      time.Duration // from Hold to the commit: no Send was processed
	Total      time.Duration // from the start of the new process to the commit
	RolledBack bool
}

// NewOld prepares the old side; Watch runs it.
func NewOld(o *Old) *Old {
	o.done = make(chan struct{})
	if o.Timeout <= 0 {
		o.Timeout = 30 * time.Second
	}
	return o
}

// Done is closed once the node handed everything over: it should exit
// without draining (main.go).
func (o *Old) Done() <-chan struct{} { return o.done }

// Watch upgrades on every SIGUSR2 until ctx ends or one upgrade succeeds.
func (o *Old) Watch(ctx context.Context) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGUSR2)
	defer signal.Stop(sig)
	for {
		select {
		case <-ctx.Done():
			return
		case <-sig:
		}
		if o.Refuse != "" {
			o.Log.Error().Str("why", o.Refuse).Msg("upgrade in place refused; the node keeps running (SIGTERM drains it)")
			continue
		}
		res, err := o.Upgrade()
		if err == nil {
			o.Log.Info().Int("new_pid", res.NewPID).Int("conns", res.Conns).Int("batches", res.Batches).
				Dur("pause", res.Pause).Dur("total", res.Total).Msg("upgrade: handed everything to the new process; exiting")
			close(o.done)
			return
		}
		o.Log.Error().Err(err).Int("new_pid", res.NewPID).Bool("rolled_back", res.RolledBack).
			Msg("upgrade failed; this process keeps serving every connection")
	}
}

// Upgrade runs one hand-off. On error this process holds everything it held
// before (connections detached for the hand-off are adopted back) and the
// new process is killed.
func (o *Old) Upgrade() (res Result, err error) {
	if !o.busy.CompareAndSwap(false, true) {
		return res, errors.New("an upgrade is already running")
	}
	defer o.busy.Store(false)
	start := time.Now()
	deadline := start.Add(o.Timeout)
	ch, childEnd, err := socketpair()
	if err != nil {
		return res, err
	}
	defer ch.close()
	cmd := exec.Command(o.Binary, o.Args...)
	cmd.Env = append(os.Environ(), envFD+"=3")
	cmd.ExtraFiles = []*os.File{childEnd}
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	err = cmd.Start()
	childEnd.Close()
	if err != nil {
		return res, fmt.Errorf("start %s: %w", o.Binary, err)
	}
	res.NewPID = cmd.Process.Pid
	o.Log.Info().Str("binary", o.Binary).Int("new_pid", res.NewPID).Dur("timeout", o.Timeout).Msg("upgrade: new process started")
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	// A new process that exits makes its end of the socket close, so recv
	// returns; the reason is then the exit status.
	why := func(err error) error {
		select {
		case werr := <-exited:
			exited <- werr
			return fmt.Errorf("the new process exited (%v) before taking over: %w", werr, err)
		case <-time.After(100 * time.Millisecond):
			return err
		}
	}
	kill := func() {
		_ = cmd.Process.Kill() // our child, by its pid
		<-exited
	}

	m, _, err := ch.recv(deadline)
	if err != nil || m.Type != msgHello {
		kill()
		return res, why(fmt.Errorf("no hello within the deadline: %v (%s)", err, m.Type))
	}
	if m.Protocol != protocolVersion {
		_ = ch.send(&message{Type: msgAbort, Error: "hand-off protocol mismatch"}, nil)
		kill()
		return res, fmt.Errorf("the new binary (%s) speaks hand-off protocol %d, this one %d: upgrade by SIGTERM instead", m.Version, m.Protocol, protocolVersion)
	}
	names := make([]string, 0, len(o.Listeners))
	fds := make([]int, 0, len(o.Listeners))
	var files []*os.File
	for _, l := range o.Listeners {
		f, err := l.Ln.File() // a duplicate; the socket stays ours too
		if err != nil {
			kill()
			return res, fmt.Errorf("listener %s: %w", l.Name, err)
		}
		files = append(files, f)
		names = append(names, l.Name)
		fds = append(fds, int(f.Fd()))
	}
	err = ch.send(&message{Type: msgListeners, Names: names, Started: o.StartedAt}, fds)
	for _, f := range files {
		f.Close()
	}
	if err != nil {
		kill()
		return res, why(err)
	}
	m, _, err = ch.recv(deadline)
	if err != nil || m.Type != msgReady {
		kill()
		if err == nil {
			err = fmt.Errorf("%s: %s", m.Type, m.Error)
		}
		return res, why(fmt.Errorf("the new process did not report healthy within %v: %w", o.Timeout, err))
	}
	o.Log.Info().Int("new_pid", res.NewPID).Str("version", m.Version).Dur("after", time.Since(start)).Msg("upgrade: new process ready; handing over connections")

	// From here this process changes: every failure must give back.
	held := time.Now()
	if o.Peers != nil {
		o.Peers.BeginHandoff()
	}
	o.GW.Hold()
	var ds []evloop.Detached
	var sts []gateway.ConnState
	rollback := func(cause error) (Result, error) {
		_ = ch.send(&message{Type: msgAbort, Error: cause.Error()}, nil)
		kill()
		n := len(ds) - o.GW.AdoptSessions(ds, sts, false)
		o.GW.Resume()
		serr := o.Serve()
		o.GW.Release()
		if o.Peers != nil {
			o.Peers.EndHandoff(false)
		}
		res.RolledBack = true
		o.Log.Warn().Int("taken_back", n).Int("handed", len(ds)).Err(serr).Msg("upgrade: rolled back")
		return res, cause
	}
	for {
		// Every quiet connection at once (one pass over the loops), then
		// sent in batches.
		detached, states, remaining := o.GW.DetachQuiet(math.MaxInt)
		ds = append(ds, detached...)
		sts = append(sts, states...)
		for len(detached) > 0 {
			batch := detached[:min(batchSize, len(detached))]
			recs := make([]connRecord, len(batch))
			bfds := make([]int, len(batch))
			for i, d := range batch {
				recs[i] = connRecord{Remote: d.Remote.String(), WS: d.WS, WSState: d.WSState, In: d.In, Out: d.Out,
					IdleNs: d.IdleNs, AgeNs: d.AgeNs, State: states[i]}
				bfds[i] = d.FD
			}
			if err := ch.send(&message{Type: msgConns, Conns: recs}, bfds); err != nil {
				return rollback(why(err))
			}
			res.Batches++
			detached, states = detached[len(batch):], states[len(batch):]
		}
		if remaining == 0 {
			break
		}
		if time.Now().After(deadline) {
			return rollback(fmt.Errorf("%d connections did not become quiet (Sends or Delivers in flight) within %v", remaining, o.Timeout))
		}
		time.Sleep(2 * time.Millisecond) // the rest wait for acks in flight
	}
	if err := ch.send(&message{Type: msgDone, Count: len(ds)}, nil); err != nil {
		return rollback(why(err))
	}
	m, _, err = ch.recv(deadline)
	if err != nil || m.Type != msgAdopted || m.Count != len(ds) {
		if err == nil {
			err = fmt.Errorf("%s count %d, want %d: %s", m.Type, m.Count, len(ds), m.Error)
		}
		return rollback(why(fmt.Errorf("the new process did not take the connections: %w", err)))
	}
	// The commit: the registration is let go (the key stays), and the new
	// process owns the connections. Our copies of their sockets close
	// without a FIN: the new process holds them open.
	o.Release()
	if err := ch.send(&message{Type: msgCommit}, nil); err != nil {
		// The new process has everything but will never adopt it: what
		// a crash of this node would cost. Nothing to take back safely.
		o.Log.Error().Err(err).Msg("upgrade: the commit could not be sent; the connections are lost with the new process")
	}
	for _, d := range ds {
		unix.Close(d.FD)
	}
	res.Conns = len(ds)
	res.Pause = time.Since(held)
	res.Total = time.Since(start)
	o.last = res
	m, _, err = ch.recv(time.Now().Add(o.Timeout))
	if err != nil || m.Type != msgTookOver {
		o.Log.Warn().Err(err).Str("got", m.Type).Msg("upgrade: the new process did not confirm the take-over")
	} else {
		o.Log.Info().Int("new_pid", res.NewPID).Str("version", m.Version).Msg("upgrade: the new process serves")
	}
	if o.Peers != nil {
		// The peers' streams end once each has stopped sending here; they
		// dial again and reach the new process.
		o.Peers.EndHandoff(true)
	}
	// The new process lives on when we exit: it is reparented, not killed.
	return res, nil
}
