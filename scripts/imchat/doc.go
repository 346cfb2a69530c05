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
// Non-interactive (demos, scripts):
//
//	imchat --uid bob --send "alice:hello" --send "carol:hi,dave:yo"
//	imchat --uid alice --wait-for 2 --timeout 30s
//
// --send is repeatable and takes a comma list; a comma followed by text that
// does not look like "uid:" stays in the message ("alice:hello, world" is one
// message). The sends go out one after another, each outcome printed; then
// imchat waits until --wait-for messages have arrived (counting those that
// arrived meanwhile) and exits 0. It exits 1 if a send failed without an
// answer (not for offline/failed outcomes, which are answers), if the wait
// times out (--timeout bounds the whole run), or if the client was kicked; 2
// for bad flags.
//
// The dispatcher defaults to $IMGATE_DISPATCHER, then http://127.0.0.1:8080.
// SDK logs go to stderr at --log-level (default warn).
package main
