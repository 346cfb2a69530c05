package wire

import (
	"strings"

	"github.com/imgate/imgate/proto/wirepb"
)

// WebSocket close codes: the one table of how the access node ends a
// WebSocket connection (docs/protocol.md §2.2 and §9 mirror it). SDKs read
// a close code back with CloseCause.
const (
	// CloseNormal: the client's Close answered, or the node closing with
	// nothing to say.
	CloseNormal uint16 = 1000
	// CloseGoingAway: the node shut down after a GoAway's grace ran out.
	CloseGoingAway uint16 = 1001
	// CloseProtocolError: an unmasked client frame, a reserved opcode, RSV
	// bits, a bad control frame or continuation.
	CloseProtocolError uint16 = 1002
	// CloseUnsupportedData: a text message (the binding is binary only).
	CloseUnsupportedData uint16 = 1003
	// CloseMessageTooBig: a message over max_frame_bytes, after
	// Error{FRAME_TOO_LARGE}.
	CloseMessageTooBig uint16 = 1009
	// CloseErrorBase + code follows every other fatal Error{code}.
	CloseErrorBase uint16 = 4000
	// CloseKickBase + reason follows every Kick{reason}.
	CloseKickBase uint16 = 4100
)

// CloseForError is the close code and reason that follow a fatal
// Error{code}: 4000 + code with the code's name, except FRAME_TOO_LARGE,
// which WebSocket has its own code for (1009).
func CloseForError(code wirepb.ErrorCode) (uint16, string) {
	name := strings.TrimPrefix(code.String(), "ERROR_CODE_")
	if code == wirepb.ErrorCode_ERROR_CODE_FRAME_TOO_LARGE {
		return CloseMessageTooBig, name
	}
	return CloseErrorBase + uint16(code), name
}

// CloseForKick is the close code and reason that follow a Kick{reason}.
func CloseForKick(reason wirepb.KickReason) (uint16, string) {
	return CloseKickBase + uint16(reason), strings.TrimPrefix(reason.String(), "KICK_REASON_")
}

// CloseCause reads a close code back: the Error code or Kick reason it
// stands for (ok false for the RFC 6455 codes and unknown ones).
func CloseCause(code uint16) (err wirepb.ErrorCode, kick wirepb.KickReason, ok bool) {
	switch {
	case code == CloseMessageTooBig:
		return wirepb.ErrorCode_ERROR_CODE_FRAME_TOO_LARGE, 0, true
	case code >= CloseKickBase && code < CloseKickBase+100:
		return 0, wirepb.KickReason(code - CloseKickBase), true
	case code >= CloseErrorBase && code < CloseKickBase:
		return wirepb.ErrorCode(code - CloseErrorBase), 0, true
	}
	return 0, 0, false
}
