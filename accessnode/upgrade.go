package main

import (
	"net"

	"github.com/rs/zerolog"

	"github.com/imgate/imgate/accessnode/internal/gateway"
	"github.com/imgate/imgate/accessnode/internal/handoff"
	"github.com/imgate/imgate/accessnode/internal/sdnotify"
)

// The glue between main and the upgrade in place (accessnode/internal/
// handoff): which listeners are handed over, and how a failed hand-off
// serves them again.

// upgradeListeners names the listening sockets a new process inherits; ws
// is nil without --ws-addr.
func upgradeListeners(client, ws, grpc, http net.Listener) []handoff.Listener {
	ls := []handoff.Listener{{Name: "client", Ln: client.(*net.TCPListener)}}
	if ws != nil {
		ls = append(ls, handoff.Listener{Name: "ws", Ln: ws.(*net.TCPListener)})
	}
	return append(ls, handoff.Listener{Name: "grpc", Ln: grpc.(*net.TCPListener)}, handoff.Listener{Name: "http", Ln: http.(*net.TCPListener)})
}

// serveAgain accepts clients again after a hand-off that failed.
func serveAgain(gw *gateway.Server, client, ws net.Listener) error {
	if err := gw.Serve(client.(*net.TCPListener)); err != nil {
		return err
	}
	if ws != nil {
		return gw.ServeWS(ws.(*net.TCPListener))
	}
	return nil
}

// upgradeRefusal says why this node cannot be upgraded in place ("": it
// can). TLS sessions cannot move between processes (docs/operations.md).
func upgradeRefusal(t *clientTLS) string {
	if t != nil {
		return "client TLS (--tls-addr, --wss-addr) is served: TLS state cannot move to another process; upgrade by SIGTERM (drain) instead"
	}
	return ""
}

// notifyServing tells systemd (Type=notify) that the node serves. A process
// started by an upgrade in place told it already, with its pid as the new
// main one (handoff.Inherited.Finish).
func notifyServing(inh *handoff.Inherited, log zerolog.Logger) {
	if inh != nil {
		return
	}
	if _, err := sdnotify.Notify("READY=1"); err != nil {
		log.Warn().Err(err).Msg("telling systemd the node serves (READY=1) failed")
	}
}
