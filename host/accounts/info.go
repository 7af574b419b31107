package accounts

import (
	"slices"
	"strings"

	"github.com/sera-dev/sera/host"
	"github.com/sera-dev/sera/host/sshkeys"
)

// UserInfo is what 'user list' and 'user show' report.
type UserInfo struct {
	Name    string   `json:"name"`
	UID     int      `json:"uid"`
	GID     int      `json:"gid"`
	Comment string   `json:"comment,omitempty"`
	Home    string   `json:"home"`
	Shell   string   `json:"shell"`
	Groups  []string `json:"groups"`
	Keys    []string `json:"keys"`
	Locked  bool     `json:"password_locked"`
	Expired bool     `json:"expired"`
}

// Info is what the host knows of u: its entry, groups, key fingerprints
// (none if its keys cannot be read) and state.
func Info(sys *host.System, db *DB, u *User) UserInfo {
	sh := db.Shadow[u.Name]
	groups := db.GroupsOf(u.Name)
	if groups == nil {
		groups = []string{}
	}
	info := UserInfo{Name: u.Name, UID: u.UID, GID: u.GID, Comment: u.Comment, Home: u.Home, Shell: u.Shell,
		Groups: groups, Keys: []string{}, Locked: sh.Locked(),
		Expired: sh.Expires >= 0 && int64(sh.Expires)*86400 <= sys.Now().Unix()}
	if ak, err := sshkeys.Load(sys, u.Owner()); err == nil {
		for _, k := range append(slices.Clone(ak.Managed), ak.OwnKeys()...) {
			info.Keys = append(info.Keys, k.Fingerprint())
		}
	}
	return info
}

// State is "active", or what keeps the account from logging in.
func (i UserInfo) State() string {
	var s []string
	if i.Locked {
		s = append(s, "password-locked")
	}
	if i.Expired {
		s = append(s, "expired")
	}
	if len(s) == 0 {
		return "active"
	}
	return strings.Join(s, ",")
}
