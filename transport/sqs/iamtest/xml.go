package iamtest

import (
	"encoding/xml"
	"fmt"
	"sort"
	"strings"
	"time"
)

// XML shapes of the results, as the SDK's deserializers read them.
type (
	xTag struct {
		Key   string `xml:"Key"`
		Value string `xml:"Value"`
	}
	xTags struct {
		Member []xTag `xml:"member"`
	}
	xUser struct {
		Path       string `xml:"Path"`
		UserName   string `xml:"UserName"`
		UserID     string `xml:"UserId"`
		Arn        string `xml:"Arn"`
		CreateDate string `xml:"CreateDate"`
		Tags       *xTags `xml:"Tags,omitempty"`
	}
	xGroup struct {
		Path       string `xml:"Path"`
		GroupName  string `xml:"GroupName"`
		GroupID    string `xml:"GroupId"`
		Arn        string `xml:"Arn"`
		CreateDate string `xml:"CreateDate"`
	}
	xKeyMeta struct {
		UserName    string `xml:"UserName"`
		AccessKeyID string `xml:"AccessKeyId"`
		Status      string `xml:"Status"`
		CreateDate  string `xml:"CreateDate"`
	}
	xKey struct {
		UserName        string `xml:"UserName"`
		AccessKeyID     string `xml:"AccessKeyId"`
		Status          string `xml:"Status"`
		SecretAccessKey string `xml:"SecretAccessKey"`
		CreateDate      string `xml:"CreateDate"`
	}
)

// Results: xml.Marshal writes them inside <r>, which serve replaces by
// <XxxResult>.
type (
	rUser struct {
		XMLName xml.Name `xml:"r"`
		User    xUser    `xml:"User"`
	}
	rGroup struct {
		XMLName xml.Name `xml:"r"`
		Group   xGroup   `xml:"Group"`
	}
	rGetGroup struct {
		XMLName     xml.Name `xml:"r"`
		Group       xGroup   `xml:"Group"`
		Users       []xUser  `xml:"Users>member"`
		IsTruncated bool     `xml:"IsTruncated"`
	}
	rGroupPolicy struct {
		XMLName        xml.Name `xml:"r"`
		GroupName      string   `xml:"GroupName"`
		PolicyName     string   `xml:"PolicyName"`
		PolicyDocument string   `xml:"PolicyDocument"`
	}
	rGroups struct {
		XMLName     xml.Name `xml:"r"`
		Groups      []xGroup `xml:"Groups>member"`
		IsTruncated bool     `xml:"IsTruncated"`
	}
	rKeys struct {
		XMLName     xml.Name   `xml:"r"`
		UserName    string     `xml:"UserName"`
		Keys        []xKeyMeta `xml:"AccessKeyMetadata>member"`
		IsTruncated bool       `xml:"IsTruncated"`
	}
	rKey struct {
		XMLName   xml.Name `xml:"r"`
		AccessKey xKey     `xml:"AccessKey"`
	}
	rCaller struct {
		XMLName xml.Name `xml:"r"`
		Arn     string   `xml:"Arn"`
		UserID  string   `xml:"UserId"`
		Account string   `xml:"Account"`
	}
)

func (s *Server) date(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05Z") }

func (s *Server) xuser(u *User) xUser {
	x := xUser{Path: "/", UserName: u.Name, UserID: "AIDA" + strings.ToUpper(fmt.Sprintf("%016x", hash(u.Name))),
		Arn: fmt.Sprintf("arn:aws:iam::%s:user/%s", s.Account, u.Name), CreateDate: s.date(u.Created)}
	if len(u.Tags) > 0 {
		x.Tags = &xTags{}
		ks := make([]string, 0, len(u.Tags))
		for k := range u.Tags {
			ks = append(ks, k)
		}
		sort.Strings(ks)
		for _, k := range ks {
			x.Tags.Member = append(x.Tags.Member, xTag{k, u.Tags[k]})
		}
	}
	return x
}

func (s *Server) xgroup(g *Group) xGroup {
	return xGroup{Path: "/", GroupName: g.Name, GroupID: "AGPA" + strings.ToUpper(fmt.Sprintf("%016x", hash(g.Name))),
		Arn: fmt.Sprintf("arn:aws:iam::%s:group/%s", s.Account, g.Name), CreateDate: s.date(g.Created)}
}
