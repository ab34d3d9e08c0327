// The Go client of tests/tests/dns_resolvers.rs: the pure-Go resolver
// (PreferGo, and the test runs it with GODEBUG=netdns=go in a CGO_ENABLED=0
// build, so no C library is involved) looks up NAME, then a TCP dial to
// the first address. Standard library only; built with `go build` at test
// time.
//
//	lookup NAME PORT
//
// Prints one result line, `ok ADDR`, `connect ERRNO ADDR` or
// `lookup notfound|timeout|temporary|other MESSAGE`, and on success a
// second line `addresses A B ...` with every address the lookup returned.
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"time"
)

func errnoName(err error) string {
	var e syscall.Errno
	if !errors.As(err, &e) {
		return "other:" + strings.ReplaceAll(err.Error(), " ", "_")
	}
	switch e {
	case syscall.EPERM:
		return "EPERM"
	case syscall.EACCES:
		return "EACCES"
	case syscall.ECONNREFUSED:
		return "ECONNREFUSED"
	case syscall.ENETUNREACH:
		return "ENETUNREACH"
	case syscall.ETIMEDOUT:
		return "ETIMEDOUT"
	}
	return fmt.Sprintf("errno%d", int(e))
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: lookup NAME PORT")
		os.Exit(64)
	}
	name, port := os.Args[1], os.Args[2]
	r := &net.Resolver{PreferGo: true}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	addrs, err := r.LookupHost(ctx, name)
	if err != nil {
		kind := "other"
		var de *net.DNSError
		if errors.As(err, &de) {
			switch {
			case de.IsNotFound:
				kind = "notfound"
			case de.IsTimeout:
				kind = "timeout"
			case de.IsTemporary:
				kind = "temporary"
			}
		}
		fmt.Printf("lookup %s %s\n", kind, err)
		return
	}
	if len(addrs) == 0 {
		fmt.Println("lookup empty")
		return
	}
	conn, err := net.DialTimeout("tcp", net.JoinHostPort(addrs[0], port), 3*time.Second)
	if err != nil {
		fmt.Printf("connect %s %s\n", errnoName(err), addrs[0])
	} else {
		conn.Close()
		fmt.Printf("ok %s\n", addrs[0])
	}
	fmt.Printf("addresses %s\n", strings.Join(addrs, " "))
}
