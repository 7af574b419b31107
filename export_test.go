package sera

// Hooks into unexported parts of the reply encoding, for the external test
// package (sera_test) only: this file is compiled into tests, never into
// the library.

// ParsePart decodes one opened reply part.
func ParsePart(b []byte) (id string, part, parts int, data []byte, err error) {
	p, err := parsePart(b)
	if err != nil {
		return "", 0, 0, nil, err
	}
	return p.id, p.part, p.parts, p.data, nil
}

// EncodePart encodes one reply part as a watcher seals it.
func EncodePart(id string, part, parts int, data []byte) []byte {
	return encodePart(id, part, parts, data)
}

// SplitReply cuts an encoded reply into parts of at most size bytes.
func SplitReply(body []byte, size int) ([][]byte, error) { return splitReply(body, size) }

// The bounds on reply parts for requests a client process does not wait
// for.
const (
	ForeignMaxReceives = foreignMaxReceives
	ForeignMaxAge      = foreignMaxAge
)
