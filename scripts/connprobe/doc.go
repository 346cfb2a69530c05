// Command connprobe measures the per-connection memory cost of candidate
// connection layers for an imgate access node.
//
// It is a measurement tool, not part of the imgate binary, and lives in its
// own Go module so that its dependencies (github.com/cloudwego/netpoll,
// golang.org/x/sys) never enter the main module.
//
// The server under test always runs in its own process so that its resident
// set size (VmRSS in /proc/<pid>/status) can be read without the client's
// memory mixed in. Subcommands:
//
//	connprobe server -mode=MODE [-addr=127.0.0.1:0]
//	    Serve length-prefixed frames (4-byte big-endian length + payload).
//	    Every frame is read and discarded; only counters are kept. Prints
//	    "READY addr=... pid=..." on stdout, then answers control lines read
//	    from stdin ("stats", "gc", "quit"). SIGUSR1 also forces a GC and
//	    prints the stats to stderr, for use with a separately started client.
//
//	connprobe client -addr=HOST:PORT -n=N
//	    Open N TCP connections, wait (-wait or SIGUSR1), send one 100-byte
//	    frame on each, hold them (-hold or SIGINT), close.
//
//	connprobe run -mode=MODE -n=N
//	    Driver: start the server as a child process, settle and sample its
//	    RSS (baseline), open N connections itself (the driver is the
//	    client), sample the idle RSS, send one 100-byte frame on every
//	    connection, wait until the server has read all N frames, sample
//	    again, and print one result line.
//
//	connprobe all -n=N
//	    Run every mode in sequence and print a markdown table.
//
// Server modes:
//
//	goroutine        net.Listen, one goroutine per connection, header read
//	                 into a 4-byte array, payload into a sync.Pool buffer.
//	goroutine-bufio  same, but through bufio.NewReaderSize(conn, 4096): the
//	                 common naive design, for contrast.
//	netpoll          github.com/cloudwego/netpoll EventLoop with defaults
//	                 (8 KiB LinkBuffer per connection).
//	netpoll1k        the same with netpoll.Config{BufferSize: 1024} and
//	                 netpoll.LinkBufferCap = 1024 (1 KiB buffer nodes).
//	epoll            raw epoll (golang.org/x/sys/unix): accept4 non-blocking,
//	                 one level-triggered epoll loop per GOMAXPROCS, a tiny
//	                 per-fd struct in a slice indexed by fd, reads into a
//	                 loop-shared 64 KiB buffer; a partial frame is copied to a
//	                 pooled buffer only while it is incomplete.
//
// Before every RSS sample the driver asks the server to run runtime.GC and
// debug.FreeOSMemory, so Go heap garbage (and pooled buffers that sync.Pool
// drops at GC) does not hide or inflate the per-connection cost. TCP
// keep-alive is disabled on both ends (KeepAlive: -1): with thousands of
// loopback connections, 15 s keep-alive probes can overflow the loopback
// backlog and abort connections. RSS covers user-space memory only; the
// kernel's per-socket memory is the same for every mode and is reported
// separately as a Slab delta.
package main
