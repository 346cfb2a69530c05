package gateway

// Lock order of the access node — gateway, evloop and relay together.
//
// A goroutine holding a lock may take only locks listed after it on the
// same line; nothing is ever taken in the other direction. Every place that
// takes a second lock while holding one says "lock order: locks.go" next
// to it. A lock not named here is a leaf: nothing else is taken while it is
// held, and no callback runs under it.
//
//	session.presMu → relay: Relay.mu, peer.mu → sendQueue.mu,
//	                 directory and watchers shards
//	    login holds presMu across Router.SessionUp, so that SessionDown
//	    can never overtake it; the relay's locks therefore never call
//	    back into the gateway while held.
//	session.roomMu → roomShard.mu → relay: Relay.mu, peer.mu → sendQueue.mu,
//	                 room directory shards
//	    a join or leave changes the room index and tells the router the
//	    room's new count under the index lock, so the home hears the
//	    counts in the order they happened (rooms.go).
//	session.mu → evloop Conn.mu → evloop loop.mu
//	    session.retry writes its re-sends under session.mu; Conn.Write
//	    lists the conn for its loop's flush (markDirty) under Conn.mu,
//	    and Conn.Hot takes loop.mu.
//	evloop Conn.mu → hubShard.mu
//	    login publishes the session in the hub inside
//	    Conn.PublishThenWrite, so LoginAck is the first frame any sender
//	    can reach; the hub releases its shard before it calls anyone.
//	relay: Relay.mu → peer.mu → sendQueue.mu
//	    installView and Resync ask peers and inbound streams for a resync
//	    under Relay.mu; peer.call queues under peer.mu to keep seq order.
//	relay: moveState.gate → Relay.mu → sendQueue.mu, and (read) →
//	       DeliverLocal's locks (hubShard.mu, session.mu → …)
//	    a Deliver from a peer reaches the gateway under the gate's read
//	    lock (its Done may run there, queueing the answer: sendQueue.mu),
//	    so the hand-off's BeginHandoff, under the write lock, knows that
//	    none is on its way to a session (relay/moving.go).
//
// Leaves, among others: flight.mu, sendOp.mu, join.mu (each releases its
// lock before calling done), shedder.mu, ipLimits.mu, evloop Engine.mu, the
// relay's cache, orderer and completeness state. The callbacks of a
// delivery (Done) and the relay's answerers run with no lock held.
//
// The locks named above are lockorder.Mutex (or RWMutex): sync's own in a
// normal build; under -tags lockcheck (`make lockcheck`, part of `make
// test`) every pair taken one inside the other is recorded, and the
// gateway, evloop and relay tests fail if any pair is ever taken the other
// way round — in any goroutine, whether or not it would have deadlocked
// this time. A change that nests locks anew adds its line here, and gives
// the new lock the lockorder type so the check covers it.
