// govmomi-sim starts govmomi's vCenter simulator (vcsim, VPX model) on 127.0.0.1 with TLS for
// Sendense's e2e tests, prints what a test needs on stdout, one "KEY value" per line, then
// "READY", and runs until its standard input closes (so it never outlives the test):
//
//	URL https://user:pass@127.0.0.1:PORT/sdk
//	CA_FILE /tmp/.../cert.pem       (the server certificate, PEM: trust it as the CA)
//	DATASTORE LocalDS_0 /tmp/...    (a datastore's name and the local folder holding its files)
//	READY
//
// Built offline against Debian's golang-github-vmware-govmomi-dev (see README "Testing against
// govmomi's simulator"): GOPATH=/usr/share/gocode GO111MODULE=off go build.
package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net/url"
	"os"

	"github.com/vmware/govmomi/simulator"
)

func main() {
	model := simulator.VPX()
	defer model.Remove()
	if err := model.Create(); err != nil {
		log.Fatalf("creating the model: %s", err)
	}
	model.Service.TLS = new(tls.Config)
	model.Service.Listen = &url.URL{Host: "127.0.0.1:0"}
	server := model.Service.NewServer()
	defer server.Close()
	caFile, err := server.CertificateFile()
	if err != nil {
		log.Fatalf("writing the certificate: %s", err)
	}
	fmt.Printf("URL %s\n", server.URL.String())
	fmt.Printf("CA_FILE %s\n", caFile)
	for _, obj := range simulator.Map.All("Datastore") {
		ds := obj.(*simulator.Datastore)
		fmt.Printf("DATASTORE %s %s\n", ds.Name, ds.Info.GetDatastoreInfo().Url)
	}
	fmt.Println("READY")
	_, _ = io.Copy(io.Discard, os.Stdin)
}
