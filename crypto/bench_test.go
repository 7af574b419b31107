package crypto

import (
	"crypto/rand"
	"fmt"
	"sync"
	"testing"
)

// A realistic request payload (~250 bytes).
var benchPayload = []byte(`{"id":"8c0f6a3e2b9d4f17a5c1e0d2b3a49f68","issued_at":"2026-11-23T09:00:00Z",` +
	`"expires_at":"2026-11-23T09:05:00Z","target":["web-*","group:db"],` +
	`"argv":["systemctl","restart","nginx.service"],"reply_to":"sera-reply-abcdefghijklmnop"}`)

var benchRecipientCounts = []int{1, 100, 1000}

var benchKeys = sync.OnceValues(func() (*Identity, []*Identity) {
	client, err := GenerateIdentity(rand.Reader)
	if err != nil {
		panic(err)
	}
	ws := make([]*Identity, 1000)
	for i := range ws {
		if ws[i], err = GenerateIdentity(rand.Reader); err != nil {
			panic(err)
		}
	}
	return client, ws
})

func reportEnvelope(b *testing.B, env []byte, n int) {
	b.ReportMetric(float64(len(env)), "env-bytes")
	b.ReportMetric(float64(len(env))/float64(n), "B/recipient")
}

// BenchmarkSealRequest measures a client sealing one request to N watchers.
func BenchmarkSealRequest(b *testing.B) {
	client, ws := benchKeys()
	for _, n := range benchRecipientCounts {
		to := publics(ws[:n]...)
		b.Run(fmt.Sprintf("recipients=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			var env []byte
			for b.Loop() {
				var err error
				if env, err = SealRequest(rand.Reader, client, to, benchPayload); err != nil {
					b.Fatal(err)
				}
			}
			reportEnvelope(b, env, n)
		})
	}
}

// BenchmarkOpenRequest measures what one watcher does with a request
// addressed to N watchers: ParseEnvelope (acceptance rule 1) and Open
// (rules 3 and 4).
func BenchmarkOpenRequest(b *testing.B) {
	client, ws := benchKeys()
	for _, n := range benchRecipientCounts {
		env, err := SealRequest(rand.Reader, client, publics(ws[:n]...), benchPayload)
		if err != nil {
			b.Fatal(err)
		}
		me := ws[n/2]
		b.Run(fmt.Sprintf("recipients=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				e, err := ParseEnvelope(env)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := e.Open(me); err != nil {
					b.Fatal(err)
				}
			}
			reportEnvelope(b, env, n)
		})
	}
}

// BenchmarkParseEnvelope isolates the parsing part of BenchmarkOpenRequest:
// what a watcher spends on a message before any public-key operation.
func BenchmarkParseEnvelope(b *testing.B) {
	client, ws := benchKeys()
	for _, n := range benchRecipientCounts {
		env, err := SealRequest(rand.Reader, client, publics(ws[:n]...), benchPayload)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("recipients=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(env)))
			for b.Loop() {
				if _, err := ParseEnvelope(env); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkReply measures sealing and opening a 4 KiB reply.
func BenchmarkReply(b *testing.B) {
	client, ws := benchKeys()
	plain := make([]byte, 4096)
	b.Run("seal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := SealReply(rand.Reader, ws[0], client.Public(), plain); err != nil {
				b.Fatal(err)
			}
		}
	})
	sealed, err := SealReply(rand.Reader, ws[0], client.Public(), plain)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("open", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			r, err := ParseReply(sealed)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := r.Open(client); err != nil {
				b.Fatal(err)
			}
		}
	})
}
