package sera_test

import (
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sera-dev/sera"
)

func newReplayCache(t *testing.T) (*sera.ReplayCache, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "replay")
	c, err := sera.OpenReplayCache(dir)
	if err != nil {
		t.Fatal(err)
	}
	return c, dir
}

func newID(t *testing.T) string {
	t.Helper()
	id, err := sera.NewRequestID(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestReplayCacheBeginFinish(t *testing.T) {
	t.Parallel()
	c, dir := newReplayCache(t)
	fp := newIdentity(t).Public().Fingerprint()
	id := newID(t)
	exp := time.Date(2030, 1, 1, 0, 5, 0, 0, time.UTC)
	if prior, err := c.Begin(fp, id, exp); err != nil || prior != nil {
		t.Fatalf("first Begin: %+v, %v", prior, err)
	}
	prior, err := c.Begin(fp, id, exp)
	if err != nil || prior == nil || prior.Done || prior.ID != id || prior.Client != fp || !prior.Expires.Equal(exp) {
		t.Fatalf("second Begin: %+v, %v; want the running entry", prior, err)
	}
	replies := [][]byte{[]byte("part one"), []byte("part two")}
	if err := c.Finish(fp, id, exp, replies); err != nil {
		t.Fatal(err)
	}
	// It survives a restart.
	c2, err := sera.OpenReplayCache(dir)
	if err != nil {
		t.Fatal(err)
	}
	prior, err = c2.Begin(fp, id, exp)
	if err != nil || prior == nil || !prior.Done || !slices.EqualFunc(prior.Replies, replies, bytes.Equal) {
		t.Fatalf("after Finish: %+v, %v", prior, err)
	}
	// Another client's id of the same value is another request.
	if prior, err := c2.Begin(newIdentity(t).Public().Fingerprint(), id, exp); err != nil || prior != nil {
		t.Errorf("same id from another client: %+v, %v", prior, err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 || !fi.Mode().IsRegular() || e.Name()[0] == '.' {
			t.Errorf("cache holds %s, mode %s", e.Name(), fi.Mode())
		}
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("cache directory mode %v, %v", fi.Mode(), err)
	}
}

func TestReplayCacheBadKeys(t *testing.T) {
	t.Parallel()
	c, dir := newReplayCache(t)
	fp := newIdentity(t).Public().Fingerprint()
	id := newID(t)
	exp := time.Now().Add(time.Minute)
	for _, k := range []struct{ client, id string }{
		{"../../etc/passwd", id},
		{fp, "../../../../tmp/x"},
		{fp, id[:31]},
		{fp, id + "0"},
		{fp[:15], id},
		{"", ""},
		{fp, "0123456789ABCDEF0123456789abcdef"},
	} {
		if _, err := c.Begin(k.client, k.id, exp); err == nil {
			t.Errorf("Begin(%q, %q) accepted", k.client, k.id)
		}
		if err := c.Finish(k.client, k.id, exp, nil); err == nil {
			t.Errorf("Finish(%q, %q) accepted", k.client, k.id)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("bad keys left %d files", len(ents))
	}
}

func TestReplayCacheTornEntry(t *testing.T) {
	t.Parallel()
	// A first record cut short by a crash: the request may have started,
	// so it is interrupted, never new.
	c, dir := newReplayCache(t)
	fp := newIdentity(t).Public().Fingerprint()
	id := newID(t)
	if err := os.WriteFile(filepath.Join(dir, fp+"-"+id), []byte(`{"client":"`), 0o600); err != nil {
		t.Fatal(err)
	}
	prior, err := c.Begin(fp, id, time.Now().Add(time.Minute))
	if err != nil || prior == nil || prior.Done {
		t.Errorf("torn entry: %+v, %v; want an interrupted entry", prior, err)
	}
	// It has no expiry of its own: kept while a request could live, then
	// purged.
	torn := filepath.Join(dir, fp+"-"+id)
	if n, _ := c.Purge(time.Now()); n != 0 {
		t.Errorf("fresh torn entry purged")
	}
	if n, _ := c.Purge(time.Now().Add(sera.MaxRequestLifetime + sera.MaxClockSkew + time.Minute)); n != 1 {
		t.Errorf("old torn entry kept")
	}
	if _, err := os.Lstat(torn); !os.IsNotExist(err) {
		t.Errorf("torn entry still on disk: %v", err)
	}
}

func TestReplayCacheSymlinks(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	real := filepath.Join(base, "real")
	if err := os.Mkdir(real, 0o700); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(base, "link")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	if _, err := sera.OpenReplayCache(link); err == nil {
		t.Error("replay cache opened through a symlink")
	}
	// A symlink planted as an entry never makes a request new.
	c, dir := newReplayCache(t)
	fp := newIdentity(t).Public().Fingerprint()
	id := newID(t)
	target := filepath.Join(base, "target")
	if err := os.Symlink(target, filepath.Join(dir, fp+"-"+id)); err != nil {
		t.Fatal(err)
	}
	if prior, err := c.Begin(fp, id, time.Now().Add(time.Minute)); err == nil && prior == nil {
		t.Error("Begin through a symlinked entry reported a new request")
	}
	if _, err := os.Lstat(target); err == nil {
		t.Error("Begin wrote through the symlink")
	}
}

func TestReplayCachePurge(t *testing.T) {
	t.Parallel()
	c, dir := newReplayCache(t)
	fp := newIdentity(t).Public().Fingerprint()
	t0 := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	early, late, done := newID(t), newID(t), newID(t)
	for _, e := range []struct {
		id  string
		exp time.Time
	}{{early, t0}, {late, t0.Add(time.Hour)}, {done, t0}} {
		if _, err := c.Begin(fp, e.id, e.exp); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Finish(fp, done, t0, [][]byte{[]byte("r")}); err != nil {
		t.Fatal(err)
	}
	count := func() int {
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		return len(ents)
	}
	// Kept until expires_at + MaxClockSkew, inclusive.
	for _, now := range []time.Time{t0.Add(-time.Hour), t0, t0.Add(sera.MaxClockSkew)} {
		if n, err := c.Purge(now); err != nil || n != 0 || count() != 3 {
			t.Fatalf("Purge(%s) removed %d (%v); entries are kept until expiry plus skew", now, n, err)
		}
	}
	n, err := c.Purge(t0.Add(sera.MaxClockSkew + time.Nanosecond))
	if err != nil || n != 2 || count() != 1 {
		t.Fatalf("Purge just past expiry plus skew removed %d (%v), %d left", n, err, count())
	}
	if prior, err := c.Begin(fp, late, t0.Add(time.Hour)); err != nil || prior == nil {
		t.Errorf("unexpired entry purged: %+v, %v", prior, err)
	}
	if prior, err := c.Begin(fp, early, t0); err != nil || prior != nil {
		t.Errorf("purged entry still known: %+v, %v", prior, err)
	}
}

func TestWatcherPurgesReplayCache(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	now := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	f.clock.Set(now)
	fp := f.client.Public().Fingerprint()
	gone, kept := newID(t), newID(t)
	if _, err := f.w.Replay.Begin(fp, gone, now.Add(-sera.MaxClockSkew-time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.w.Replay.Begin(fp, kept, now.Add(-sera.MaxClockSkew+time.Second)); err != nil {
		t.Fatal(err)
	}
	// Run purges when it starts; a served request shows it has.
	start(t, f.w)
	if err := f.tr.Send(t.Context(), f.w.Queue(), f.sealed(f.request("ping"))); err != nil {
		t.Fatal(err)
	}
	f.a.wait(t, 1)
	if prior, err := f.w.Replay.Begin(fp, kept, now); err != nil || prior == nil {
		t.Errorf("entry within expiry plus skew purged: %+v, %v", prior, err)
	}
	if prior, err := f.w.Replay.Begin(fp, gone, now); err != nil || prior != nil {
		t.Errorf("entry past expiry plus skew kept: %+v, %v", prior, err)
	}
}

// The purge reads an entry's expiry from its first bytes: a stored reply
// of 64 MiB, or a stray file as big, costs it no more memory than a small
// one.
func TestReplayCachePurgeReadsLittle(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "replay")
	c, err := sera.OpenReplayCache(dir)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	big := func(name, head string, mtime time.Time) {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(head), 0o600); err != nil {
			t.Fatal(err)
		}
		// Sparse: 64 MiB on no disk.
		if err := os.Truncate(p, 64<<20); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	entry := func(expires time.Time) string {
		return `{"client":"c","id":"` + strings.Repeat("a", 32) + `","expires":"` + expires.Format(time.RFC3339) + `","done":true,"replies":["`
	}
	big("c-expired", entry(now.Add(-time.Hour)), now)
	big("c-live", entry(now.Add(time.Hour)), now)
	big("stray-old", "", now.Add(-2*sera.MaxRequestLifetime))
	big("stray-new", "not json at all", now)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	n, err := c.Purge(now)
	runtime.ReadMemStats(&after)
	if err != nil || n != 2 {
		t.Fatalf("Purge = %d, %v; want the expired entry and the old stray file", n, err)
	}
	// Far below one file whole, far above what other tests running now
	// may allocate meanwhile.
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 16<<20 {
		t.Errorf("the purge allocated %d bytes for four 64 MiB files: it read them whole", grew)
	}
	for name, want := range map[string]bool{"c-expired": false, "c-live": true, "stray-old": false, "stray-new": true} {
		if _, err := os.Lstat(filepath.Join(dir, name)); (err == nil) != want {
			t.Errorf("%s present: %v, want %v", name, err == nil, want)
		}
	}
}
