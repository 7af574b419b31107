package sera

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/sera-dev/sera/crypto"
	"github.com/sera-dev/sera/safefile"
)

// ReplayCache remembers every request id a watcher has accepted until the
// request expires, with the reply it sent, so that a duplicate delivery is
// answered again and never run twice. It lives on disk, one file per id,
// and survives restarts.
type ReplayCache struct {
	dir string
}

// ReplayEntry is what the cache knows of one request id.
type ReplayEntry struct {
	Client  string    `json:"client"`
	ID      string    `json:"id"`
	Expires time.Time `json:"expires"`
	// Done is false while the command runs, and stays false if the
	// watcher died before replying: such a request is never re-run.
	Done bool `json:"done"`
	// Replies are the sealed reply messages as they were sent.
	Replies [][]byte `json:"replies,omitempty"`
}

// OpenReplayCache opens (creating it 0700 if needed) the cache in dir.
func OpenReplayCache(dir string) (*ReplayCache, error) {
	if err := safefile.MkdirPrivate(dir); err != nil {
		return nil, fmt.Errorf("failed to open replay cache: %w", err)
	}
	return &ReplayCache{dir: dir}, nil
}

func (c *ReplayCache) path(client, id string) (string, error) {
	// Both halves are validated before they name a file.
	if !crypto.ValidFingerprint(client) || !validID(id) {
		return "", errors.New("invalid replay cache key")
	}
	return filepath.Join(c.dir, client+"-"+id), nil
}

// Begin records that request id of client is about to run. If the id was
// seen before, it returns the earlier entry and records nothing. The
// record is on disk (fsynced) before Begin returns, so a crash while the
// command runs cannot lead to a second run.
func (c *ReplayCache) Begin(client, id string, expires time.Time) (*ReplayEntry, error) {
	p, err := c.path(client, id)
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(&ReplayEntry{Client: client, ID: id, Expires: expires})
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return c.read(p)
	} else if err != nil {
		return nil, fmt.Errorf("failed to record request: %w", err)
	}
	_, werr := f.Write(b)
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		// Not recorded, so not begun: a torn record would pass for an
		// interrupted run and the request would never run.
		os.Remove(p)
		return nil, fmt.Errorf("failed to record request: %w", err)
	}
	if err := safefile.SyncDir(c.dir); err != nil {
		os.Remove(p)
		return nil, fmt.Errorf("failed to record request: %w", err)
	}
	return nil, nil
}

// Forget removes the record Begin made for a request that did not run
// (it could not be audited), so a later delivery runs it.
func (c *ReplayCache) Forget(client, id string) error {
	p, err := c.path(client, id)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("failed to forget request: %w", err)
	}
	return safefile.SyncDir(c.dir)
}

func (c *ReplayCache) read(p string) (*ReplayEntry, error) {
	b, err := safefile.ReadNoFollow(p)
	if err != nil {
		return nil, fmt.Errorf("failed to read replay cache: %w", err)
	}
	var e ReplayEntry
	if err := json.Unmarshal(b, &e); err != nil {
		// A torn write can only be the initial record (Finish renames
		// atomically): the request may have started, so treat it as
		// interrupted, never as new.
		return &ReplayEntry{}, nil
	}
	return &e, nil
}

// Finish stores the replies sent for a request begun with Begin.
func (c *ReplayCache) Finish(client, id string, expires time.Time, replies [][]byte) error {
	p, err := c.path(client, id)
	if err != nil {
		return err
	}
	b, err := json.Marshal(&ReplayEntry{Client: client, ID: id, Expires: expires, Done: true, Replies: replies})
	if err != nil {
		return err
	}
	return safefile.WriteAtomic(p, b, 0o600)
}

// Purge deletes entries whose request can no longer be accepted: rule 6
// rejects it once now > expires_at, and MaxClockSkew of margin covers a
// clock that steps back.
func (c *ReplayCache) Purge(now time.Time) (int, error) {
	d, err := os.Open(c.dir)
	if err != nil {
		return 0, fmt.Errorf("failed to purge replay cache: %w", err)
	}
	defer d.Close()
	n := 0
	// In batches, and each entry's expiry from its first bytes only: the
	// purge's memory does not grow with the number of entries or their
	// size (a stored reply may be megabytes; a stray file anything).
	for {
		ents, err := d.ReadDir(256)
		for _, de := range ents {
			if strings.HasPrefix(de.Name(), ".") || !de.Type().IsRegular() {
				continue
			}
			p := filepath.Join(c.dir, de.Name())
			expires, ok := readExpires(p)
			if !ok {
				// A torn initial record, or not an entry: no request
				// lives longer than MaxRequestLifetime after it was
				// recorded.
				fi, err := de.Info()
				if err != nil {
					continue
				}
				expires = fi.ModTime().Add(MaxRequestLifetime)
			}
			if now.After(expires.Add(MaxClockSkew)) {
				if os.Remove(p) == nil {
					n++
				}
			}
		}
		if errors.Is(err, io.EOF) || len(ents) == 0 {
			return n, nil
		}
		if err != nil {
			return n, fmt.Errorf("failed to purge replay cache: %w", err)
		}
	}
}

// expiresWithin bounds what readExpires reads of an entry: its client,
// id and expiry come first (ReplayEntry's field order), in well under
// this many bytes.
const expiresWithin = 1 << 10

// readExpires reads the expiry of the entry at p from its first bytes,
// without reading the stored replies after it.
func readExpires(p string) (time.Time, bool) {
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return time.Time{}, false
	}
	defer f.Close()
	dec := json.NewDecoder(io.LimitReader(f, expiresWithin))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return time.Time{}, false
	}
	for dec.More() {
		key, err := dec.Token()
		if err != nil {
			return time.Time{}, false
		}
		if key == "expires" {
			var t time.Time
			if err := dec.Decode(&t); err != nil || t.IsZero() {
				return time.Time{}, false
			}
			return t, true
		}
		var skip json.RawMessage
		if key == "replies" || dec.Decode(&skip) != nil {
			return time.Time{}, false
		}
	}
	return time.Time{}, false
}
