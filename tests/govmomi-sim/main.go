// govmomi-sim starts govmomi's vCenter simulator (vcsim, VPX model) on 127.0.0.1 with TLS for
// Sendense's e2e tests, prints what a test needs on stdout, one "KEY value" per line, then
// "READY", and runs until its standard input closes (so it never outlives the test):
//
//	URL https://user:pass@127.0.0.1:PORT/sdk
//	CA_FILE /tmp/....pem            (the server's self-signed certificate, PEM: trust it)
//	DATASTORE LocalDS_0 /tmp/...    (a datastore's name and the local folder holding its files)
//	READY
//
// Built offline against Debian's golang-github-vmware-govmomi-dev (see README "Testing against
// govmomi's simulator"): GOPATH=/usr/share/gocode GO111MODULE=off go build.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/url"
	"os"
	"time"

	"github.com/vmware/govmomi/simulator"
)

func main() {
	model := simulator.VPX()
	defer model.Remove()
	if err := model.Create(); err != nil {
		log.Fatalf("creating the model: %s", err)
	}
	// Our own certificate: Go's default test certificate is a CA used as the server's own
	// certificate with a key rustls refuses; this one is a self-signed P-256 leaf for 127.0.0.1.
	cert, err := leafCertificate()
	if err != nil {
		log.Fatalf("making the certificate: %s", err)
	}
	model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	model.Service.Listen = &url.URL{Host: "127.0.0.1:0"}
	server := model.Service.NewServer()
	defer server.Close()
	caFile, err := writePEM(cert.Certificate[0])
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

func leafCertificate() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	template := x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, &template, &template, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

func writePEM(der []byte) (string, error) {
	f, err := os.CreateTemp("", "govmomi-sim-*.pem")
	if err != nil {
		return "", err
	}
	defer f.Close()
	if err := pem.Encode(f, &pem.Block{Type: "CERTIFICATE", Bytes: der}); err != nil {
		return "", err
	}
	return f.Name(), nil
}
