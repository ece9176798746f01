package Test::Nginx::Socket;

# A small work-alike of Test::Nginx::Socket (openresty/test-nginx): the
# same data format and the same checks, for the sections listed in
# t/runner/README.md.  This part is HTTP and the checks; nginx itself is
# run by Test::Nginx::Util.

use strict;
use warnings;

use Test::Base -base;    # a Test::Base subclass, like the real one
use HTTP::Response ();
use IO::Select ();
use IO::Socket::INET ();
use Time::HiRes qw(sleep);
use Test::Nginx::Util;

our @EXPORT = qw(
    env_to_nginx is_str plan run_tests run_test repeat_each
    worker_connections master_process_enabled no_long_string workers
    master_on master_off log_level no_shuffle no_root_location use_hup
    server_name server_addr server_root html_dir server_port timeout
    check_accum_error_log add_block_preprocessor bail_out
);

$Test::Nginx::Util::RunTestHelper = \&run_test_helper;
$Test::Nginx::Util::CheckErrorLog = \&check_error_log;

sub is_str (@) {
    my ($got, $expected, $desc) = @_;
    return ref $expected eq 'Regexp' ? like($got, $expected, $desc) : is($got, $expected, $desc);
}

sub fmt_str ($) {
    my $s = shift;
    chomp $s;
    $s =~ s/"/\\"/g;
    $s =~ s/\r/\\r/g;
    $s =~ s/\n/\\n/g;
    return $s;
}

# "Name: value" lines (# comments skipped) -> "Name: value\r\n"...
sub parse_more_headers ($) {
    my $out = '';
    for my $line (split /\n+/, shift // '') {
        next if $line =~ /^\s*#/ || $line !~ /\S/;
        my ($key, $val) = split /:\s*/, $line, 2;
        $out .= "$key: " . ($val // '') . "\r\n";
    }
    return $out;
}

# The packets of one request, "METHOD [/uri [HTTP/x.y]]\nbody" perhaps
# cut in pieces, made ready to send: the request line completed, Host,
# Connection, more_headers and Content-Length added, the body trimmed.
# The cuts in the body stay where they were.
sub build_request ($$$$) {
    my ($name, $more_headers, $conn, $packets) = @_;
    my $orig = join '', @$packets;
    $orig =~ /\A\s*(\S+) *(?:(\S+) *)?(?:(\S+) *)?\s*?(?:\n|\z)/
        or bail_out("$name - Request line is not valid. Should be 'meth [url [version]]' "
                    . "but got \"$orig\".");
    my ($first_len, $meth, $url, $ver) = ($+[0], $1, $2 // '/', $3 // 'HTTP/1.1');
    my $body = substr $orig, $first_len;
    my ($lead, $len_header) = (0, '');
    my $chunked = $more_headers =~ /^Transfer-Encoding: chunked\r$/mi;
    if (!$chunked && $body ne '' && $more_headers !~ /(?:^|\n)Content-Length:/) {
        $lead = length(($body =~ /\A(\s*)/)[0]);
        $body =~ s/^\s+|\s+$//g;
        $len_header = "Content-Length: " . length($body) . "\r\n";
    }

    my $head = "$meth $url $ver\r\n";
    $head .= "Host: $ServerName\r\n" if $more_headers !~ /(?:^|\n)Host:/i;
    $head .= "Connection: $conn\r\n" if $more_headers !~ /(?:^|\n)Connection/i;
    $head .= "$more_headers$len_header\r\n";

    my ($all, $pos, $cut, @out) = ($head . $body, 0, 0);
    for my $packet (@$packets[0 .. $#$packets - 1]) {
        $pos += length $packet;
        my $in_body = $pos - $first_len - $lead;
        $in_body = $in_body < 0 ? 0 : $in_body > length $body ? length $body : $in_body;
        push @out, substr $all, $cut, length($head) + $in_body - $cut;
        $cut = length($head) + $in_body;
    }
    return [@out, substr $all, $cut];
}

# the requests of a block, each a list of packets { value, delay_before }
sub get_req_from_block ($) {
    my $block = shift;
    my $name = $block->name;

    if (defined(my $raw = $block->raw_request)) {
        return [[map { +{ value => $_ } } ref $raw ? @$raw : $raw]];
    }

    my $more = $block->more_headers || '';
    my $headers = sub {    # the more_headers of request $i
        my $i = shift;
        return parse_more_headers($more) if ref $more ne 'ARRAY';
        bail_out("$name - --- more_headers lacks data for the request $i") if !defined $more->[$i];
        return parse_more_headers($more->[$i]);
    };

    if (my $reqs = $block->pipelined_requests) {
        ref $reqs eq 'ARRAY' or bail_out("$name - invalid entries in --- pipelined_requests");
        my $all = join '', map {
            build_request($name, $headers->($_), $_ == $#$reqs ? 'close' : 'keep-alive',
                          [expand_env_in_text($reqs->[$_], $name)])->[0]
        } 0 .. $#$reqs;
        return [[{ value => $all }]];
    }

    my $request = $block->request // bail_out("$name - request empty");
    if (!ref $request) {
        1 while $request =~ s/^\s*#[^\n]+\s+|^\s+//s;
        return [[{ value => build_request($name, $headers->(0), 'close', [$request])->[0] }]];
    }
    ref $request eq 'ARRAY' or bail_out("$name - --- request must be a string or an array");

    my @list;
    for my $i (0 .. $#$request) {
        # a request is a string, or an array of packets: strings or
        # { value => ..., delay_before => seconds }
        my @pieces = ref $request->[$i] eq 'ARRAY' ? @{ $request->[$i] } : $request->[$i];
        my $packets = build_request($name, $headers->($i), 'close',
                                    [map { ref $_ ? $_->{value} // '' : $_ } @pieces]);
        push @list, [map { +{ %{ ref $pieces[$_] ? $pieces[$_] : {} }, value => $packets->[$_] } }
                     0 .. $#pieces];
    }
    return \@list;
}

# sends a request on a new connection; reads until the server closes it
sub send_request ($$$) {
    my ($packets, $timeout, $block) = @_;
    my $name = $block->name;
    my $sock;
    for (my $t = 0; !$sock; $t += 0.1) {
        $sock = IO::Socket::INET->new(PeerAddr => $ServerAddr, PeerPort => $ServerPortForClient,
                                      Proto => 'tcp', Timeout => $timeout);
        last if $sock;
        if ($t >= 5) {
            fail("$name - Can't connect to $ServerAddr:$ServerPortForClient: $! (aborted)");
            return undef;
        }
        sleep 0.1;
    }
    $sock->blocking(0);
    local $SIG{PIPE} = 'IGNORE';
    my $sel = IO::Select->new($sock);
    my $resp = '';

    WRITE: for my $i (0 .. $#$packets) {
        my $delay = $i ? $packets->[$i]{delay_before} // $block->raw_request_middle_delay : 0;
        sleep $delay if $delay;
        my ($buf, $off) = ($packets->[$i]{value}, 0);
        while ($off < length $buf) {
            if (!$sel->can_write($timeout)) {
                fail("ERROR: client socket timed out - $name\n");
                return $resp;
            }
            my $n = syswrite $sock, $buf, length($buf) - $off, $off;
            next if !defined $n && $!{EAGAIN};
            if (!defined $n) {
                warn "WARNING: $name - write failed: $!\n";
                last WRITE;
            }
            $off += $n;
        }
    }

    while (1) {
        if (!$sel->can_read($timeout)) {
            fail("ERROR: client socket timed out - $name\n");
            last;
        }
        my $n = sysread $sock, my $buf, 65536;
        next if !defined $n && $!{EAGAIN};
        warn "WARNING: $name - HTTP response read failure: $!\n" if !defined $n;
        last if !$n;
        $resp .= $buf;
    }
    return $resp;
}

# -> (HTTP::Response, the raw headers, the bytes after this response)
sub parse_response ($$$) {
    my ($name, $raw, $head_req) = @_;
    my $raw_headers = $raw =~ /(.*?\r\n)\r\n/s ? $1 : '';
    my $res = HTTP::Response->parse($raw);
    my $code = $res->code;
    $res->code(undef) if defined $code && $code !~ /^\d+$/;
    return ($res, $raw_headers) if $head_req || ($code && ($code == 304 || $code == 101));

    my ($body, $left) = ($res->content // '');
    if (($res->header('Transfer-Encoding') // '') eq 'chunked') {
        my $decoded = '';
        while (1) {
            if ($body !~ /\G[ \t]*([0-9A-Fa-f]+)[ \t]*(?:;[^\r\n]*)?\r\n/gc) {
                fail("$name - invalid chunked body, or no last chunk: "
                     . fmt_str(substr $body, pos($body) // 0, 60));
                last;
            }
            my ($size, $at) = (hex $1, pos $body);
            if ($size == 0) {
                $body =~ /\G(?:[^\r\n]+\r\n)*\r\n/gc or fail("$name - invalid chunked trailer");
                $left = substr $body, pos $body if (pos($body) // 0) < length $body;
                last;
            }
            if (substr($body, $at + $size, 2) ne "\r\n") {
                fail("$name - invalid chunked data (not enough octets, or no CRLF)");
                last;
            }
            $decoded .= substr $body, $at, $size;
            pos($body) = $at + $size + 2;
        }
        $res->content($decoded);
    } elsif (($res->header('Content-Length') // '') =~ /^(\d+)$/) {
        if (length $body > $1) {
            $left = substr $body, $1;
            $res->content(substr $body, 0, $1);
        } elsif (length $body < $1) {
            warn "WARNING: $name - response body truncated: $1 expected, got ", length $body, "\n";
        }
    }
    return ($res, $raw_headers, $left);
}

# the expected value for request $idx, when there are several requests
sub get_indexed_value ($$$$) {
    my ($name, $value, $idx, $need_array) = @_;
    return ref $value eq 'ARRAY' ? $value->[0] : $value if !$need_array;
    return $value->[$idx] if ref $value eq 'ARRAY';
    bail_out("$name - You asked for many requests, the expected results should be arrays as well.");
}

sub check_response ($$$$$$) {
    my ($block, $res, $raw_headers, $idx, $repeated, $need_array) = @_;
    my $name = $block->name;
    my $value = sub { get_indexed_value($name, $_[0], $idx, $need_array) };

    my $expected = defined $block->error_code ? $value->($block->error_code) : 200;
    if (!is(($res && $res->code) || '', $expected, "$name - status code ok")) {
        my $body = $res ? $res->content // '' : '';
        $body = substr($body, 0, 400) . '...' if length $body > 400;
        diag($res && $res->code ? "request $idx got: " . $res->status_line . "\n"
                                  . $res->headers->as_string . "\n$body"
                                : "request $idx: no (valid) HTTP response");
    }

    if (defined $block->response_headers) {
        my $headers = parse_headers($value->($block->response_headers));
        for my $key (sort keys %$headers) {
            if (!defined(my $val = $headers->{$key})) {
                unlike($raw_headers, qr/^\s*\Q$key\E\s*:/ms,
                       "$name - header $key not present in the raw headers");
            } else {
                $val =~ s/\$ServerPort\b/$ServerPort/g;
                is(($res && $res->header($key)) // '', $val, "$name - header $key ok");
            }
        }
    } elsif (defined $block->response_headers_like) {
        my $headers = parse_headers($value->($block->response_headers_like));
        for my $key (sort keys %$headers) {
            like(($res && $res->header($key)) // '', qr/^$headers->{$key}$/,
                 "$name - header $key like ok");
        }
    }

    my $content = $res ? $res->content : undef;
    if (defined $block->response_body) {
        my $expected = $value->($block->response_body);
        if (ref $expected) {
            like($content, $expected,
                 "$name - response_body - like (repeated req $repeated, req $idx)");
        } else {
            $expected =~ s/\$ServerPort\b/$ServerPort/g if defined $expected;
            is($content, expand_env_in_text($expected, $name),
               "$name - response_body - response is expected (repeated req $repeated, req $idx)");
        }
    } elsif (defined $block->response_body_like) {
        my $pat = $value->($block->response_body_like);
        $pat =~ s/\$ServerPort\b/$ServerPort/g if !ref $pat;
        my $summary = trim($content) // '';
        $summary = substr($summary, 0, 200) . '...' if length $summary > 200;
        like($content, qr/$pat/s, "$name - response_body_like - response is expected ($summary)");
    }
}

# error_log: each pattern must match a line of the error log written
# since the last check; no_error_log: none may.  A pattern is a line of
# the section (a substring), or an element (string or qr//) of an eval.
sub check_error_log ($$;$) {
    my ($block, $repeated, $lines) = @_;
    my $name = $block->name;
    $lines ||= error_log_data();
    my %seen;

    for my $section (qw(error_log no_error_log)) {
        my $pats = $block->$section // next;
        $pats = ref $pats eq 'ARRAY' ? [@$pats] : ref $pats ? [$pats] : [split /\n+/, $pats];
        $seen{$_} = 1 for map { !ref $_ && /\[(alert|crit|emerg)/ ? $1 : () } @$pats;
        my @first = map {    # the first line each pattern matches, or undef
            my $pat = $_;
            my ($at) = grep { ref $pat ? $lines->[$_] =~ $pat : index($lines->[$_], $pat) >= 0 }
                            0 .. $#$lines;
            $at;
        } @$pats;
        # the patterns found in the order of the lines, then the others
        for my $i ((sort { $first[$a] <=> $first[$b] } grep { defined $first[$_] } 0 .. $#$pats),
                   grep { !defined $first[$_] } 0 .. $#$pats)
        {
            my ($p, $at) = (fmt_str($pats->[$i]), $first[$i]);
            if ($section eq 'error_log') {
                ok(defined $at, "$name - pattern \"$pats->[$i]\" "
                   . (defined $at ? 'matches' : 'should match')
                   . " a line in error.log (req $repeated)");
            } elsif (!defined $at) {
                pass("$name - pattern \"$p\" does not match a line in error.log (req $repeated)");
            } else {
                my $end = $at + 5 > $#$lines ? $#$lines : $at + 5;
                fail("$name - pattern \"$p\" should not match any line in error.log but matches "
                     . "line \"" . fmt_str($lines->[$at]) . "\" (req $repeated)\n"
                     . join '', @$lines[$at + 1 .. $end]);
            }
        }
    }

    for my $line (@$lines) {
        warn "WARNING: $name - ", fmt_str($line), "\n"
            if $line =~ /\[(alert|crit|emerg)\]/ && !$seen{$1};
        fail("$name - " . fmt_str($line)) if $line =~ /\bAssertion .*?failed\b/;
    }
}

sub run_test_helper ($$) {
    my ($block, $repeated) = @_;
    my $name = $block->name;
    my $reqs = get_req_from_block($block);
    my $timeout = parse_time($block->timeout) // $Test::Nginx::Util::Timeout;
    my $pipelined = $block->pipelined_requests;
    my $total = $pipelined ? @$pipelined : @$reqs;
    my $idx = 0;

    for my $req (@$reqs) {
        my $head_req = $req->[0]{value} =~ /^\s*HEAD\s/;
        my $raw = send_request($req, $timeout, $block);
        for (1 .. ($pipelined ? $total : 1)) {
            my ($res, $raw_headers, $left) = parse_response($name, $raw // '', $head_req);
            check_response($block, $res, $raw_headers, $idx, $repeated, $pipelined || @$reqs > 1)
                if !defined $block->ignore_response;
            warn "WARNING: $name - unexpected extra bytes after the response: \"",
                fmt_str($left), "\"\n" if defined $left && !$pipelined;
            $raw = $left;
            last if ++$idx == $total;
            sleep $block->wait if $block->wait;
            check_error_log($block, $repeated);
        }
    }
    sleep $block->wait if $block->wait;
    check_error_log($block, $repeated);
}

1;
