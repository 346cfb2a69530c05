// Command imchat is a command-line chat client for imgate, built on the Go
// SDK (proto/client). It is for trying the system by hand and for demos and
// end-to-end tests; it is not a product client.
//
// Interactive:
//
//	imchat --uid alice [--device cli] [--dispatcher http://127.0.0.1:8080]
//	connected to node n1
//	bob: hello there                 (send to bob)
//	→ bob #1 delivered (1/1 devices)
//	/to bob                          (set a default recipient)
//	hello again                      (goes to bob)
//	→ bob #2 offline
//	← bob: hi alice                  (a message arrived)
//	… disconnected from node n1: ... / … reconnecting in 512ms (attempt 1)
//
// Commands: "/to UID", "/to" (show), "/help", "/quit". A line "UID: text"
// always goes to UID, so with a default recipient set, a text that itself
// starts with "word:" needs the explicit "bob: word: ..." form. EOF (Ctrl-D)
// or Ctrl-C exits with status 0, after outstanding sends have their answer.
//
// Rooms (docs/protocol.md §13):
//
//	/join team-42                    (join; the rest of the line is the room id)
//	joined room team-42
//	#team-42: hi all                 (publish to the room)
//	→ #team-42 #3 delivered (2/2 devices, 2 nodes)
//	← [team-42] bob: hi alice        (a room's message)
//	/room team-42                    (plain lines now publish there)
//	/rooms                           (the rooms this connection is in)
//	/leave team-42
//	joined room ops (by the backend) (the app's backend changed our rooms)
//
// A broadcast room's publish prints "sent (N devices, M nodes, not
// acknowledged: a broadcast room)". The SDK joins the rooms again after a
// reconnect.
//
// Non-interactive (demos, scripts):
//
//	imchat --uid bob --send "alice:hello" --send "carol:hi,dave:yo"
//	imchat --uid alice --wait-for 2 --timeout 30s
//	imchat --uid bob --join team-42 --publish "team-42:hello team"
//	imchat --uid carol --join team-42 --wait-for 1
//
// --send is repeatable and takes a comma list; a comma followed by text that
// does not look like "uid:" stays in the message ("alice:hello, world" is one
// message). --join (repeatable, one room id each) joins before anything
// is sent; --publish "room:text" (repeatable) publishes after the sends.
// The sends go out one after another, each outcome printed; then
// imchat waits until --wait-for messages have arrived (counting those that
// arrived meanwhile) and exits 0. It exits 1 if a send failed without an
// answer (not for offline/failed outcomes, which are answers) or a --join
// was refused, if the wait
// times out (--timeout bounds the whole run), or if the client was kicked; 2
// for bad flags.
//
// The dispatcher defaults to $IMGATE_DISPATCHER, then http://127.0.0.1:8080.
// SDK logs go to stderr at --log-level (default warn).
package main
