package gateway

import (
	"github.com/imgate/imgate/proto/wirepb"
)

// KickAdmin ends uid's sessions on this node (device "" means all), each
// client getting Kick{ADMIN, detail, ban}, and returns how many were
// kicked. With ban the client does not reconnect by itself (protocol §8.1).
func (s *Server) KickAdmin(uid, device, detail string, ban bool) int {
	if !ban {
		return s.Kick(uid, device, detail)
	}
	var buf [8]*session
	n := 0
	for _, t := range s.hub.lookup(uid, buf[:0]) {
		if device != "" && t.device != device {
			continue
		}
		s.kickWith(t, &wirepb.Kick{Reason: wirepb.KickReason_KICK_REASON_ADMIN, Detail: detail, Ban: true})
		n++
	}
	s.kicks.Add(uint64(n))
	return n
}

// KickSessionDetail is KickSession with the text the client sees: the
// login policy's kick (a newer login of another device took the place).
func (s *Server) KickSessionDetail(uid, device string, loginAt int64, detail string) bool {
	var buf [8]*session
	for _, t := range s.hub.lookup(uid, buf[:0]) {
		if t.device == device && t.loginAt == loginAt {
			s.replaced.Add(1)
			s.kick(t, wirepb.KickReason_KICK_REASON_REPLACED, detail)
			return true
		}
	}
	return false
}
