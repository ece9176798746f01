package PresenceSSE;

# A background Server-Sent Events client for the tests of /v1/events: a
# forked process that opens the stream and writes what it receives to a
# file, each line prefixed with the time it arrived (ms since the epoch).
# Works from "--- init" under the real Test::Nginx and under t/runner.

use strict;
use warnings;

use IO::Socket::INET ();
use POSIX ();
use Time::HiRes ();

our @EXPORT = qw(sse_start sse_stop sse_read);
use Exporter 'import';

# Opens GET $path with "Accept: text/event-stream" in a child process;
# returns its pid.  The file gets "<ms> <line>" for every line received,
# the status line and headers included.  Options: headers, more request
# header lines ("Name: value\r\n" each), as a reconnecting EventSource
# sends Last-Event-ID.
sub sse_start {
    my ($path, $file, %o) = @_;

    my $port = $ENV{TEST_NGINX_SERVER_PORT} || 1984;
    unlink $file;

    my $pid = fork;
    die "fork: $!" unless defined $pid;

    if ($pid == 0) {
        POSIX::setsid();
        open my $out, '>', $file or POSIX::_exit(1);
        $out->autoflush(1);

        my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                         PeerPort => $port, Proto => 'tcp')
            or POSIX::_exit(1);

        print $sock "GET $path HTTP/1.1\r\nHost: localhost\r\n"
                  . "Accept: text/event-stream\r\n"
                  . ($o{headers} // '') . "\r\n";

        my $buf = '';
        while (1) {
            my $n = sysread $sock, $buf, 65536, length $buf;
            last if !$n;
            my $now = int(Time::HiRes::time() * 1000);
            while ($buf =~ s/^([^\n]*)\n//) {
                my $line = $1;
                $line =~ s/\r$//;
                print $out "$now $line\n";
            }
        }
        POSIX::_exit(0);
    }

    # the stream is open once its headers came
    for (1 .. 50) {
        last if -s $file && `cat $file` =~ /^\d+ \r?$/m;
        Time::HiRes::sleep(0.05);
    }

    return $pid;
}

sub sse_stop {
    my ($pid) = @_;
    kill 'TERM', $pid;
    waitpid $pid, 0;
}

# The events of the file: [{ t => ms, data => "...", id => "..." }, ...]
# in order (id: the SSE id the message came with, as a browser keeps it
# for Last-Event-ID), and the status line.
sub sse_read {
    my ($file) = @_;
    my (@events, $status, $id);
    open my $in, '<', $file or return ([], undef);
    while (my $line = <$in>) {
        chomp $line;
        my ($t, $text) = split / /, $line, 2;
        $text //= '';
        $status //= $text if $text =~ m{^HTTP/};
        $id = $1 if $text =~ /^id: ?(.*)$/;
        push @events, { t => $t, data => $1, id => $id }
            if $text =~ /^data: ?(.*)$/;
    }
    return (\@events, $status);
}

for my $name (@EXPORT) {
    no strict 'refs';
    *{"Test::Base::Filter::$name"} = \&{$name};
    *{"Test::Nginx::Util::$name"} = \&{$name};
}

1;
