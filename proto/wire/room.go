package wire

import (
	"unicode"
	"unicode/utf8"
)

// MaxRoomID is the longest room id, in bytes (protocol §13.1).
const MaxRoomID = 128

// ValidRoom reports whether room is a room id: 1-128 bytes of UTF-8
// without control characters. Nodes refuse other ids (BAD_REQUEST); the
// SDKs and the dispatcher refuse them before sending.
func ValidRoom(room string) bool {
	if room == "" || len(room) > MaxRoomID || !utf8.ValidString(room) {
		return false
	}
	for _, r := range room {
		if unicode.IsControl(r) {
			return false
		}
	}
	return true
}
