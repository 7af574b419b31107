package host

import (
	"net"
	"net/netip"
	"os"
)

// realNet is the network of the namespaces sera runs in.
type realNet struct{}

func (realNet) Hostname() (string, error) { return os.Hostname() }

func (realNet) Addrs() ([]netip.Addr, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out, nil
}
