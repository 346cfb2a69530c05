package client

import (
	"fmt"
	"time"
)

// EventKind says what an Event reports.
type EventKind int

const (
	// EventConnected: logged in to NodeID (after Dial, a reconnect or a move).
	EventConnected EventKind = iota + 1
	// EventDisconnected: the connection to NodeID was lost; Err says why.
	// Pending Sends on it failed with ErrConnectionLost.
	EventDisconnected
	// EventReconnecting: the next attempt (Attempt, from 1) starts after
	// Delay; Err is the previous failure.
	EventReconnecting
	// EventGoAway: NodeID asked the client to move after Delay; Detail is the
	// node's reason.
	EventGoAway
	// EventKicked: NodeID ended the session; Err is a *KickedError. For
	// reason REPLACED the client stops (EventStopped follows).
	EventKicked
	// EventServerError: NodeID sent a non-fatal Error frame; Err is a
	// *ServerError.
	EventServerError
	// EventStopped: the client stopped for good; Err is what Client.Err
	// returns. It is the last event before the channel closes.
	EventStopped
	// EventRoom: the connection joined Room (Joined) or left it: by its own
	// Join or Leave, by the app's backend (ByBackend), or because joining it
	// again after a reconnect was refused (Err is the *RoomError). Rooms()
	// has the set as it is now.
	EventRoom
)

var kindNames = map[EventKind]string{
	EventConnected:    "connected",
	EventDisconnected: "disconnected",
	EventReconnecting: "reconnecting",
	EventGoAway:       "goaway",
	EventKicked:       "kicked",
	EventServerError:  "server_error",
	EventStopped:      "stopped",
	EventRoom:         "room",
}

func (k EventKind) String() string {
	if s, ok := kindNames[k]; ok {
		return s
	}
	return fmt.Sprintf("EventKind(%d)", int(k))
}

// Event is one change of the client's connection.
type Event struct {
	Kind    EventKind
	Time    time.Time
	NodeID  string
	Attempt int
	Delay   time.Duration
	Detail  string
	Err     error
	// EventRoom only.
	Room      string
	Joined    bool
	ByBackend bool
}

func (e Event) String() string {
	s := e.Kind.String()
	if e.NodeID != "" {
		s += " node=" + e.NodeID
	}
	if e.Attempt > 0 {
		s += fmt.Sprintf(" attempt=%d", e.Attempt)
	}
	if e.Delay > 0 || e.Kind == EventReconnecting || e.Kind == EventGoAway {
		s += " delay=" + e.Delay.String()
	}
	if e.Room != "" {
		s += fmt.Sprintf(" room=%q joined=%v", e.Room, e.Joined)
		if e.ByBackend {
			s += " by=backend"
		}
	}
	if e.Detail != "" {
		s += " detail=" + e.Detail
	}
	if e.Err != nil {
		s += " err=" + e.Err.Error()
	}
	return s
}

// emit queues e without blocking: when the buffer is full the oldest event
// is dropped. Callers are run and the readers, all of which stop before
// events is closed.
func (c *Client) emit(e Event) {
	e.Time = time.Now()
	c.evMu.Lock()
	defer c.evMu.Unlock()
	for {
		select {
		case c.events <- e:
			return
		default:
		}
		select {
		case <-c.events:
			c.log.Debug().Msg("event buffer full, oldest event dropped")
		default:
		}
	}
}
