// Package auth authenticates the app's users at the dispatcher, before
// GET /v1/endpoint hands them a node: it verifies the app's own bearer JWT
// locally (HS256 with a shared secret, or RS256/EdDSA with public keys from a
// JWKS file, chosen by the token's key id), requires an expiry, checks the
// audience when one is configured, and returns the uid from one claim.
//
// It accepts only the algorithms its keys are for (never "none", never an
// HMAC token verified with a public key), bounds the size of what it parses,
// and reports failures as a few fixed errors whose text is safe to show to a
// client. It must never log or return a token, a secret or a claim value in
// an error, and never fetch keys over the network (the JWKS file is read once
// at start by the caller).
package auth
