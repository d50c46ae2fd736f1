// Command cniclient drives CNI plugins through libcni, the library podman
// and containerd embed, so tenet's end-to-end tests exercise the same exec,
// result-caching and chaining code real runtimes use.
//
// It is built offline from Debian's golang-github-appc-cni-dev in GOPATH
// mode (no module proxy is needed):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o cniclient main.go
//
// Usage:
//
//	cniclient add|check|del NETWORK NETNS   run the network's plugin list
//	cniclient version PLUGIN-TYPE           print the plugin's versions
//
// Environment (cnitool-compatible names; empty means unset):
//
//	NETCONFPATH      directory of conflists (default /etc/cni/net.d)
//	CNI_PATH         plugin directories, ':'-separated (default /usr/lib/cni)
//	CNI_IFNAME       interface name in the container (default eth0)
//	CNI_CONTAINERID  container id (default: derived from the netns path)
//	CNI_ARGS         "K=V;K2=V2" pairs
//	CAP_ARGS         JSON object of capability arguments (runtimeConfig)
//	CNI_CACHEDIR     libcni's result cache (default /var/lib/cni)
//
// NETNS may be empty (""), which libcni passes on as an empty CNI_NETNS:
// that is how containerd's second DEL looks.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
)

func getenv(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

func fail(format string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, "cniclient: "+format+"\n", a...)
	os.Exit(1)
}

// runtimeConf builds the attachment description libcni hands every plugin.
func runtimeConf(netns string) *libcni.RuntimeConf {
	id := os.Getenv("CNI_CONTAINERID")
	if id == "" {
		sum := sha256.Sum256([]byte(netns))
		id = "cni-" + hex.EncodeToString(sum[:])[:16]
	}
	rt := &libcni.RuntimeConf{
		ContainerID: id,
		NetNS:       netns,
		IfName:      getenv("CNI_IFNAME", "eth0"),
	}
	if raw := os.Getenv("CNI_ARGS"); raw != "" {
		for _, pair := range strings.Split(raw, ";") {
			kv := strings.SplitN(pair, "=", 2)
			if len(kv) != 2 || kv[0] == "" {
				fail("CNI_ARGS: %q is not K=V", pair)
			}
			rt.Args = append(rt.Args, [2]string{kv[0], kv[1]})
		}
	}
	if raw := os.Getenv("CAP_ARGS"); raw != "" {
		if err := json.Unmarshal([]byte(raw), &rt.CapabilityArgs); err != nil {
			fail("CAP_ARGS: %v", err)
		}
	}
	return rt
}

func main() {
	if len(os.Args) < 3 {
		fail("usage: cniclient add|check|del NETWORK NETNS | cniclient version PLUGIN-TYPE")
	}
	ctx := context.Background()
	paths := filepath.SplitList(getenv("CNI_PATH", "/usr/lib/cni"))
	cni := libcni.NewCNIConfigWithCacheDir(paths, getenv("CNI_CACHEDIR", ""), nil)

	op, target := os.Args[1], os.Args[2]
	if op == "version" {
		info, err := cni.GetVersionInfo(ctx, target)
		if err != nil {
			fail("version %s: %v", target, err)
		}
		fmt.Println(strings.Join(info.SupportedVersions(), " "))
		return
	}
	if len(os.Args) != 4 {
		fail("%s: need NETWORK and NETNS (NETNS may be \"\")", op)
	}
	list, err := libcni.LoadConfList(getenv("NETCONFPATH", "/etc/cni/net.d"), target)
	if err != nil {
		fail("load network %s: %v", target, err)
	}
	netns := os.Args[3]
	if netns != "" {
		if netns, err = filepath.Abs(netns); err != nil {
			fail("netns path: %v", err)
		}
	}
	rt := runtimeConf(netns)

	switch op {
	case "add":
		res, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			fail("add: %v", err)
		}
		if err := res.Print(); err != nil {
			fail("print result: %v", err)
		}
	case "check":
		if err := cni.CheckNetworkList(ctx, list, rt); err != nil {
			fail("check: %v", err)
		}
	case "del":
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			fail("del: %v", err)
		}
	default:
		fail("unknown operation %q", op)
	}
}
