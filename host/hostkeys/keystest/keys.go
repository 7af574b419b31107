// Package keystest makes SSH public keys for tests: of every type sera
// installs as host or user keys, and of the types it refuses.
package keystest

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"strings"
	"sync"
	"testing"

	"golang.org/x/crypto/ssh"
)

// Host keys for the tests: made once, RSA is slow.
var (
	khKeysOnce sync.Once
	khRSA      ssh.PublicKey
	khRSA1024  ssh.PublicKey
)

// Ed25519 is a fresh ed25519 public key.
func Ed25519(t testing.TB) ssh.PublicKey {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// ECDSA is a fresh ECDSA P-256 public key.
func ECDSA(t testing.TB) ssh.PublicKey {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(&priv.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// RSA is a 2048-bit and a 1024-bit (too weak) RSA key, made once per
// test binary.
func RSA(t testing.TB) (ssh.PublicKey, ssh.PublicKey) {
	t.Helper()
	khKeysOnce.Do(func() {
		for _, bits := range []int{2048, 1024} {
			priv, err := rsa.GenerateKey(rand.Reader, bits)
			if err != nil {
				panic(err)
			}
			k, err := ssh.NewPublicKey(&priv.PublicKey)
			if err != nil {
				panic(err)
			}
			if bits == 2048 {
				khRSA = k
			} else {
				khRSA1024 = k
			}
		}
	})
	return khRSA, khRSA1024
}

// Cert is a host certificate for key, signed by a throwaway CA.
func Cert(t testing.TB, key ssh.PublicKey) ssh.PublicKey {
	t.Helper()
	_, caPriv, _ := ed25519.GenerateKey(rand.Reader)
	signer, err := ssh.NewSignerFromKey(caPriv)
	if err != nil {
		t.Fatal(err)
	}
	cert := &ssh.Certificate{Key: key, CertType: ssh.HostCert, ValidPrincipals: []string{"web2"}, ValidBefore: ssh.CertTimeInfinity}
	if err := cert.SignCert(rand.Reader, signer); err != nil {
		t.Fatal(err)
	}
	return cert
}

// SK is a FIDO (security key) ed25519 key: never a host key.
func SK(t testing.TB) ssh.PublicKey {
	t.Helper()
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	blob := ssh.Marshal(struct {
		Name, Key, App string
	}{ssh.KeyAlgoSKED25519, string(pub), "ssh:"})
	k, err := ssh.ParsePublicKey(blob)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// AuthorizedLine is a fresh ed25519 key as an authorized_keys line (with
// comment, if any) and the parsed key.
func AuthorizedLine(t testing.TB, comment string) (string, ssh.PublicKey) {
	t.Helper()
	k := Ed25519(t)
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))
	if comment != "" {
		line += " " + comment
	}
	return line, k
}
