package PresenceWS;

# A background WebSocket client for the tests of /v1/events: a forked
# process that does the HTTP Upgrade handshake (checking
# Sec-WebSocket-Accept), then reads the server's unmasked frames and writes
# them to a file, each line prefixed with the time it arrived (ms since the
# epoch):
#
#   <ms> HTTP/1.1 101 Switching Protocols     the status line
#   <ms> accept ok|bad                         the Sec-WebSocket-Accept check
#   <ms> text <payload>                        a text frame
#   <ms> close|ping|op<N>                      other frames
#
# ws_handshake() does a handshake in the foreground and returns the status
# line (for refused streams).

use strict;
use warnings;

use Digest::SHA ();
use MIME::Base64 ();
use IO::Socket::INET ();
use POSIX ();
use Time::HiRes ();

our @EXPORT = qw(ws_start ws_stop ws_read ws_handshake);
use Exporter 'import';

my $GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

sub _connect {
    my ($path) = @_;
    my $port = $ENV{TEST_NGINX_SERVER_PORT} || 1984;
    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                     PeerPort => $port, Proto => 'tcp')
        or return;
    my $key = MIME::Base64::encode_base64(
        join('', map { chr int rand 256 } 1 .. 16), '');
    print $sock "GET $path HTTP/1.1\r\nHost: localhost\r\n"
              . "Upgrade: websocket\r\nConnection: Upgrade\r\n"
              . "Sec-WebSocket-Key: $key\r\nSec-WebSocket-Version: 13\r\n\r\n";
    my $want = MIME::Base64::encode_base64(Digest::SHA::sha1($key . $GUID), '');

    # the response head
    my $buf = '';
    while ($buf !~ /\r\n\r\n/) {
        my $n = sysread $sock, $buf, 65536, length $buf;
        last if !$n;
    }
    my ($head, $rest) = split /\r\n\r\n/, $buf, 2;
    $head //= '';
    my ($status) = $head =~ /^([^\r\n]*)/;
    my ($accept) = $head =~ /^Sec-WebSocket-Accept:\s*(\S+)/mi;
    return ($sock, $status // '', (defined $accept && $accept eq $want),
            $rest // '');
}

sub ws_handshake {
    my ($path) = @_;
    my ($sock, $status, $ok) = _connect($path);
    close $sock if $sock;
    return $status;
}

sub ws_start {
    my ($path, $file) = @_;
    unlink $file;

    my $pid = fork;
    die "fork: $!" unless defined $pid;

    if ($pid == 0) {
        POSIX::setsid();
        open my $out, '>', $file or POSIX::_exit(1);
        $out->autoflush(1);
        my $now = sub { int(Time::HiRes::time() * 1000) };

        my ($sock, $status, $ok, $buf) = _connect($path);
        POSIX::_exit(1) unless $sock;
        print $out $now->(), " $status\n";
        print $out $now->(), " accept ", ($ok ? "ok" : "bad"), "\n";
        POSIX::_exit(0) unless $status =~ / 101 /;

        while (1) {
            # whole frames in the buffer
            while (length $buf >= 2) {
                my ($b0, $b1) = unpack 'CC', $buf;
                my $op = $b0 & 0x0f;
                my $masked = $b1 & 0x80;
                my $len = $b1 & 0x7f;
                my $off = 2;
                if ($len == 126) {
                    last if length $buf < 4;
                    $len = unpack 'n', substr $buf, 2, 2;
                    $off = 4;
                } elsif ($len == 127) {
                    last if length $buf < 10;
                    $len = unpack 'Q>', substr $buf, 2, 8;
                    $off = 10;
                }
                my $mask = '';
                if ($masked) { $mask = substr $buf, $off, 4; $off += 4; }
                last if length $buf < $off + $len;
                my $data = substr $buf, $off, $len;
                substr($buf, 0, $off + $len) = '';
                my $t = $now->();
                if ($masked) {
                    print $out "$t masked\n";   # a server must not mask
                    $data ^= substr($mask x (int($len / 4) + 1), 0, $len);
                }
                if ($op == 1) { print $out "$t text $data\n"; }
                elsif ($op == 8) { print $out "$t close\n"; POSIX::_exit(0); }
                elsif ($op == 9) {
                    print $out "$t ping\n";
                    # pong, masked as a client must
                    my $m = pack 'N', int rand 2**32;
                    print $sock pack('CC', 0x8a, 0x80 | length $data) . $m
                        . ($data ^ substr($m x (int(length($data) / 4) + 1),
                                          0, length $data));
                }
                else { print $out "$t op$op\n"; }
            }
            my $n = sysread $sock, $buf, 65536, length $buf;
            last if !$n;
        }
        POSIX::_exit(0);
    }

    # the stream is open once the handshake's answer came
    for (1 .. 50) {
        last if -s $file && `cat $file` =~ /^\d+ accept /m;
        Time::HiRes::sleep(0.05);
    }

    return $pid;
}

sub ws_stop {
    my ($pid) = @_;
    kill 'TERM', $pid;
    waitpid $pid, 0;
}

# The text frames of the file: [{ t => ms, data => "..." }, ...] in order,
# the status line, whether the accept check passed, and the other lines.
sub ws_read {
    my ($file) = @_;
    my (@events, @other, $status, $accept);
    open my $in, '<', $file or return ([], undef, undef, []);
    while (my $line = <$in>) {
        chomp $line;
        my ($t, $text) = split / /, $line, 2;
        $text //= '';
        if ($text =~ m{^HTTP/}) { $status //= $text }
        elsif ($text =~ /^accept (\w+)/) { $accept = $1 eq 'ok' }
        elsif ($text =~ /^text (.*)$/s) { push @events, { t => $t, data => $1 } }
        else { push @other, $text }
    }
    return (\@events, $status, $accept, \@other);
}

for my $name (@EXPORT) {
    no strict 'refs';
    *{"Test::Base::Filter::$name"} = \&{$name};
    *{"Test::Nginx::Util::$name"} = \&{$name};
}

1;
