// Command ferretdb-wrapper runs an embedded FerretDB v1 (SQLite backend) for local tests.
//
// A plain `go install github.com/FerretDB/FerretDB/cmd/ferretdb@v1.24.x` binary panics on the
// missing build/version/version.txt, so this wrapper embeds the public
// github.com/FerretDB/FerretDB/ferretdb package instead (it disables telemetry itself).
//
// Usage: ferretdb-wrapper --listen-addr 127.0.0.1:27017 --state-dir /path/to/dir
//
// It prints "ferretdb-wrapper listening on mongodb://HOST:PORT/" to stdout once the listener is
// about to be started and runs until SIGINT or SIGTERM.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/FerretDB/FerretDB/ferretdb"
)

func main() {
	listenAddr := flag.String("listen-addr", "127.0.0.1:27017", "TCP address to listen on")
	stateDir := flag.String("state-dir", ".", "directory for the SQLite database files")
	logLevel := flag.String("log-level", "warn", "log level: debug, info, warn or error")
	flag.Parse()

	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "ferretdb-wrapper: bad --log-level: %s\n", err)
		os.Exit(2)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	dir, err := filepath.Abs(*stateDir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ferretdb-wrapper: %s\n", err)
		os.Exit(1)
	}
	if err = os.MkdirAll(dir, 0o755); err != nil {
		fmt.Fprintf(os.Stderr, "ferretdb-wrapper: %s\n", err)
		os.Exit(1)
	}

	f, err := ferretdb.New(&ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: *listenAddr},
		Logger:    logger,
		Handler:   "sqlite",
		SQLiteURL: "file:" + dir + "/",
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "ferretdb-wrapper: %s\n", err)
		os.Exit(1)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	fmt.Printf("ferretdb-wrapper listening on mongodb://%s/\n", *listenAddr)

	if err = f.Run(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "ferretdb-wrapper: %s\n", err)
		os.Exit(1)
	}
}
