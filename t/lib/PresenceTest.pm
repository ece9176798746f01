package PresenceTest;

# Helpers shared by the Test::Nginx files of the presence module: tokens,
# the module's default configuration ("# api", "# pg api"), the nchan
# wiring of the event streams ("# events publisher", "# events"), and a
# pause between two requests.
# Works the same under the real Test::Nginx and under t/runner.

use strict;
use warnings;

use Cwd ();
use Digest::SHA qw(hmac_sha256);
use IO::Socket::INET ();
use MIME::Base64 qw(encode_base64url);
use Test::Nginx::Socket ();
use Time::HiRes ();

our @EXPORT = qw(token bearer ticket fetch_ticket http_request pause
                 error_like psql pg_reset pg_stop pg_start events_defaults);
our @EXPORT_OK = qw(events_publisher events_locations write_shipped);
use Exporter 'import';

our $SECRET = 'presence-test-secret-0123456789';

$ENV{TEST_NGINX_MODULE_DIR} ||= 'build/modules';
$ENV{TEST_NGINX_MODULE_DIR} = Cwd::abs_path($ENV{TEST_NGINX_MODULE_DIR})
    if -d $ENV{TEST_NGINX_MODULE_DIR};
$ENV{TEST_NGINX_PRESENCE_SECRET} = $SECRET;

# the locations of API.md, spelled "# api" in a block's config
our $API = <<'CONF';
    location = /v1/heartbeat { presence_heartbeat; }
    location /v1/status { presence_status; }
    location = /metrics { presence_metrics; }
    location = /pause { return 204; }
CONF

our $MAIN_CONFIG = <<'CONF';
load_module $TEST_NGINX_MODULE_DIR/ngx_http_presence_module.so;
CONF

our $HTTP_CONFIG = <<'CONF';
presence_zone name=presence size=4m;
presence_heartbeat_timeout 500ms;
presence_auth_secret $TEST_NGINX_PRESENCE_SECRET;
CONF

# An HS256 token for user $id.  Options: exp, nbf, secret, alg, sub (a raw
# claim value, e.g. a number instead of a string), header, payload.
sub token {
    my ($id, %o) = @_;

    my $alg = $o{alg} // 'HS256';
    my $header = $o{header} // qq({"alg":"$alg","typ":"JWT"});
    my $sub = exists $o{sub} ? $o{sub} : qq("$id");
    my $payload = $o{payload} // join '', qq({"sub":$sub),
        (defined $o{exp} ? qq(,"exp":$o{exp}) : ''),
        (defined $o{nbf} ? qq(,"nbf":$o{nbf}) : ''), '}';

    my $signing = encode_base64url($header) . '.' . encode_base64url($payload);
    my $sig = encode_base64url(hmac_sha256($signing, $o{secret} // $SECRET));

    return "$signing.$sig";
}

sub bearer {
    return 'Authorization: Bearer ' . token(@_);
}

# A stream ticket for user $id, made here as any node with the secret makes
# it (ngx_http_presence_ticket_sign): the route and a dot, when there is
# one, then base64url of a version byte, the id (32 bits) and the expiry
# (ms since the epoch, 64 bits), big-endian, and the HMAC-SHA256 of these
# and the route keyed with HMAC-SHA256(secret, "presence stream ticket
# v1").  Options: exp (default 10 min from now: "--- request eval" is
# evaluated when the file starts), secret, version, route (a token: the
# route is its claims part, as POST /v1/events/ticket makes it).
sub ticket {
    my ($id, %o) = @_;

    my $exp = $o{exp} // int(Time::HiRes::time() * 1000) + 600000;
    my $key = hmac_sha256('presence stream ticket v1', $o{secret} // $SECRET);
    my $data = pack 'C N Q>', $o{version} // 1, $id, $exp;
    my $route = defined $o{route} ? (split /\./, $o{route})[1] // '' : '';

    return ($route ne '' ? "$route." : '')
           . encode_base64url($data . hmac_sha256($data . $route, $key));
}

# One request to the running nginx (from "--- init"): returns the status
# code, the response head and the body.  $headers: "Name: value" lines.
sub http_request {
    my ($method, $path, $headers) = @_;

    my $port = $ENV{TEST_NGINX_SERVER_PORT} || 1984;
    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                     PeerPort => $port, Proto => 'tcp',
                                     Timeout => 3)
        or return (0, '', '');

    $headers = defined $headers && $headers ne '' ? "$headers\r\n" : '';
    $headers =~ s/\r?\n(?=.)/\r\n/g;

    print $sock "$method $path HTTP/1.0\r\nHost: localhost\r\n$headers"
              . ($method eq 'POST' ? "Content-Length: 0\r\n" : '') . "\r\n";

    local $/;
    my $res = <$sock> // '';
    my ($head, $body) = split /\r\n\r\n/, $res, 2;
    my ($code) = ($head // '') =~ m{^HTTP/1\.\d (\d{3})};

    return ($code // 0, $head // '', $body // '');
}

# A ticket for the holder of $token from POST $path (/v1/events/ticket),
# undef when the answer is not a 200 with a ticket.
sub fetch_ticket {
    my ($token, $path) = @_;

    my ($code, $head, $body) = http_request('POST',
        $path // '/v1/events/ticket', "Authorization: Bearer $token");

    return $code == 200 && $body =~ /^\{"ticket":"([A-Za-z0-9_.-]+)"/
           ? $1 : undef;
}

# The error body of API.md with this code.
sub error_like {
    my ($code) = @_;
    return qr/^\{"error":\{"code":"$code","message":"(?:[^"\\]|\\.)+"\}\}$/;
}

# A request that answers at once and then holds the test for $secs before
# the next request: Test::Nginx sends its empty second packet that late.
sub pause {
    my ($secs) = @_;
    return ['GET /pause', { value => '', delay_before => $secs }];
}

# PostgreSQL of the test run, started by util/services.sh (make test): its
# conninfo names the passfile of the runtime folder (passfile=), scram
# with a random password; no password is written in a test or a config.
our $PG_DSN = $ENV{TEST_NGINX_PG_DSN}
    || 'host=127.0.0.1 port=55432 dbname=presence_test user=presence';
$ENV{TEST_NGINX_PG_DSN} = $PG_DSN;

our $PG_CONFIG = <<'CONF';
presence_zone name=presence size=4m;
presence_heartbeat_timeout 500ms;
presence_auth_secret $TEST_NGINX_PRESENCE_SECRET;
presence_postgres "$TEST_NGINX_PG_DSN" pool=2 timeout=3s;
CONF

our $PG_API = <<'CONF';
    location = /v1/heartbeat { presence_heartbeat; }
    location /v1/status { presence_status; }
    location /v1/users { presence_users; }
    location /v1/subscriptions { presence_subscriptions; }
    location = /metrics { presence_metrics; }
    location = /pause { return 204; }
CONF

# The nchan wiring of the event streams (issue 11, item 4) is the shipped
# one: conf/presence-publisher.conf and conf/presence-events.conf, read
# here and their parameters replaced, so that a change to the wiring is
# one edit, there.  In a block, "# events publisher [options]" in
# http_config and "# events [options]" in config are replaced by these
# (options: "name=value" or "name", i.e. name=1); t/lib/PresenceMass.pm
# calls them with its own socket.
our $CONF_DIR = Cwd::abs_path(__FILE__ =~ s{[^/]*$}{}r . '../../conf');

our @SHIPPED = qw(presence-publisher.conf presence-events.conf);

# conf/$name with @NAME@ and @NAME=default@ replaced by $p{NAME} (or the
# default) as util/run.sh renders it; with $p{-bare}, its comments left
# out.
sub shipped_conf {
    my ($name, %p) = @_;

    open my $in, '<', "$CONF_DIR/$name" or die "$CONF_DIR/$name: $!";
    my $conf = do { local $/; <$in> };
    if ($p{-bare}) {
        $conf =~ s/^[ \t]*#[^\n]*\n//mg;
        $conf =~ s/\n{3,}/\n\n/g;
        $conf =~ s/^\n+//;
    }
    # as sed does, the comments' examples too; none left in a directive
    $conf =~ s{\@([A-Z_]+)(?:=([^\@]*))?\@}{$p{$1} // $2 // "\@$1\@"}ge;
    die "conf/$name: no value for $1\n"
        if $conf =~ /^[ \t]*[^#\s][^\n]*(\@[A-Z_]+\@)/m;
    return $conf;
}

# The shipped nchan wiring rendered in $dir, beside the nginx.conf that
# includes it (t/lib/PresenceDeploy.pm), its socket $dir/publish.sock.
sub write_shipped {
    my ($dir) = @_;

    for my $name (@SHIPPED) {
        my $conf = shipped_conf($name, PUBLISH_SOCK => "$dir/publish.sock");
        open my $out, '>', "$dir/$name" or die "$dir/$name: $!";
        print $out $conf;
        close $out or die "$dir/$name: $!";
    }
}

# The text of "location = $uri { ... }" in $conf, up to the brace as far
# in as "location".
sub location_of {
    my ($conf, $uri) = @_;
    $conf =~ /^(([ \t]*)location = \Q$uri\E \{\n.*?^\2\}\n)/ms
        or die "no location $uri in the shipped nchan wiring\n";
    return $1;
}

# events_publisher: conf/presence-publisher.conf, presence_publish and the
# publisher server on a unix socket (sock, default
# $TEST_NGINX_SERVER_ROOT/logs/publish.sock) with the streams' checks
# (/internal/events-check, /internal/stream) and nchan's publisher
# location.  Options: queue (of presence_publish), nobody (publish to
# nobody.sock beside sock, where nobody listens), token (also
# /internal/events-check-token, the check with presence_events_token on),
# stream (the lease of /internal/stream, presence_stream: e.g. stream=2s).
sub events_publisher {
    my (%o) = @_;

    my %p = (PUBLISH_SOCK => $o{sock}
                             // '$TEST_NGINX_SERVER_ROOT/logs/publish.sock',
             PUBLISH_OPTIONS => $o{queue} ? "queue=$o{queue}" : '',
             ($o{stream} ? (STREAM_LEASE => $o{stream}) : ()));
    my $conf = shipped_conf('presence-publisher.conf', %p, -bare => 1);

    if ($o{nobody}) {
        (my $to = $p{PUBLISH_SOCK}) =~ s{[^/]*$}{nobody.sock};
        $conf =~ s{^(\s*presence_publish\s+unix:)[^:]+}{$1$to}m
            or die "no presence_publish in conf/presence-publisher.conf\n";
    }
    if ($o{token}) {
        my $check = location_of($conf, '/internal/events-check');
        my $token = location_of(shipped_conf('presence-publisher.conf', %p,
                                             EVENTS_TOKEN => 'on', -bare => 1),
                                '/internal/events-check');
        $token =~ s{/internal/events-check\b}{/internal/events-check-token};
        $conf =~ s{\Q$check\E}{$check\n$token};
    }
    return $conf;
}

# The main_config of the event tests: nchan, then the module.
our $EVENTS_MAIN_CONFIG = <<'CONF';
load_module /usr/lib/nginx/modules/ngx_nchan_module.so;
load_module $TEST_NGINX_MODULE_DIR/ngx_http_presence_module.so;
CONF

# A file of event tests calls this once, before run_tests(): its blocks
# without a main_config load nchan ($EVENTS_MAIN_CONFIG), and those
# without an http_config get $http (which holds its "# events publisher").
sub events_defaults {
    my ($http) = @_;
    Test::Nginx::Socket::add_block_preprocessor(sub {
        my $block = shift;
        $block->set_value('main_config', $EVENTS_MAIN_CONFIG)
            if !defined $block->main_config;
        $block->set_value('http_config', $http)
            if !defined $block->http_config;
    });
}

# events_locations: conf/presence-events.conf, /v1/events (nchan's
# subscriber, EventSource and WebSocket, one channel per id of
# $presence_channels) and its authorize request, proxied to the publisher
# server's check (sock as above).  Options: timeout
# (nchan_subscriber_timeout, default 0: never), hooks (keep the stream
# hooks: nchan_subscribe_request and nchan_unsubscribe_request to
# /internal/stream, an open stream is presence), check (keep the 400
# bad_request when $presence_channels is empty: more ids than nchan's
# channel id holds), token (also /v1/events-token, without the hooks or
# the check, whose check allows ?token=).
sub events_locations {
    my (%o) = @_;

    my %p = (PUBLISH_SOCK => $o{sock}
                             // '$TEST_NGINX_SERVER_ROOT/logs/publish.sock',
             STREAM_TIMEOUT => $o{timeout} // 0);
    my $conf = shipped_conf('presence-events.conf', %p, -bare => 1);
    my $events = location_of($conf, '/v1/events');
    my $auth = location_of($conf, '/internal/events-auth');
    my $hook = location_of($conf, '/internal/stream-hook') . "\n"
               . location_of($conf, '/internal/stream-close-hook');

    # $events without the hooks, or the check (dies where the shipped
    # file no longer has them as written here)
    my $strip = sub {
        my ($loc, %s) = @_;
        $s{hooks}
            or $loc =~ s/^[ \t]*nchan_(?:un)?subscribe_request\b[^\n]*\n//mg
            or die "conf/presence-events.conf: no stream hooks\n";
        $s{check} or $loc =~ s/^[ \t]*default_type[^\n]*\n
                                [ \t]*if\ \(\$presence_channels\ =\ ""\)\ \{\n
                                .*?^[ \t]*\}\n\n?//msx
            or die "conf/presence-events.conf: no check of the ids\n";
        return $loc;
    };

    my $out = $strip->($events, %o) . "\n" . $auth;
    $out .= "\n" . $hook if $o{hooks};
    if ($o{token}) {
        my $e = location_of(shipped_conf('presence-events.conf', %p,
                                         STREAM_TIMEOUT => 0, -bare => 1),
                            '/v1/events');
        $e = $strip->($e);
        $e =~ s{location = /v1/events\b}{location = /v1/events-token};
        $e =~ s{/internal/events-auth\b}{/internal/events-auth-token};
        (my $proxy = $auth) =~ s{/internal/events-auth\b}
                                {/internal/events-auth-token};
        $proxy =~ s{/internal/events-check\b}{/internal/events-check-token};
        $out .= "\n# the same with ?token= allowed\n" . $e . "\n" . $proxy;
    }
    return $out;
}

# "stream=2s hooks" -> (stream => '2s', hooks => 1)
sub placeholder_options {
    my ($text) = @_;
    return map { /^(\w+)=(.*)$/ ? ($1 => $2) : ($_ => 1) } split ' ', $text // '';
}

# Runs SQL with psql against the test database; dies on error.
sub psql {
    my ($sql) = @_;
    local $ENV{PGCONNECT_TIMEOUT} = 5;
    open my $fh, '|-', 'psql', '-q', '-X', '-v', 'ON_ERROR_STOP=1', $PG_DSN
        or die "psql: $!";
    print $fh $sql;
    close $fh or die "psql failed on: $sql\n";
}

# Empties the tables and loads users [id, name] and subscriptions
# [subscriber, target] with fixed ids.
sub pg_reset {
    my (%o) = @_;
    my $sql = "TRUNCATE users, users_subscribers RESTART IDENTITY CASCADE;\n";
    for my $u (@{ $o{users} || [] }) {
        my ($id, $name) = @$u;
        $name =~ s/'/''/g;
        $sql .= "INSERT INTO users (user_id, user_name) VALUES ($id, '$name');\n";
    }
    for my $s (@{ $o{subs} || [] }) {
        $sql .= "INSERT INTO users_subscribers (user_id, user_id_t) "
              . "VALUES ($s->[0], $s->[1]);\n";
    }
    # ids handed out by POST /v1/users start above the fixed ones
    $sql .= "SELECT setval(pg_get_serial_sequence('users', 'user_id'), 100000);\n";
    psql($sql);
}

sub pg_stop {
    system('util/services.sh', 'pg-stop') == 0 or die "pg-stop failed";
}

sub pg_start {
    system('util/services.sh', 'pg-start') == 0 or die "pg-start failed";
}

# "--- request eval" and friends are evaluated in Test::Base::Filter,
# "--- init" in Test::Nginx::Util
for my $name (@EXPORT) {
    no strict 'refs';
    *{"Test::Base::Filter::$name"} = \&{$name};
    *{"Test::Nginx::Util::$name"} = \&{$name};
}

# Fills in the module's defaults for blocks that start an nginx (have a
# config); blocks without a config go on with the running nginx.
Test::Nginx::Socket::add_block_preprocessor(sub {
    my $block = shift;

    if (!defined $block->no_error_log && !defined $block->error_log
        && !defined $block->must_die)
    {
        $block->set_value('no_error_log', "[error]\n[alert]\n[crit]\n[emerg]");
    }

    # Redis requires a password (util/services.sh): the blocks' own
    # "presence_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT" get it
    if (defined $ENV{TEST_NGINX_REDIS_PASSWORD}
        && $ENV{TEST_NGINX_REDIS_PASSWORD} ne '')
    {
        for my $section (qw(http_config config)) {
            my $v = $block->$section // next;
            $v =~ s{^(\s*presence_redis\s+127\.0\.0\.1:\$TEST_NGINX_REDIS_PORT\b)(?![^;]*password=)}
                   {$1 password=\$TEST_NGINX_REDIS_PASSWORD}mg
                and $block->set_value($section, $v);
        }
    }

    # the nchan wiring (events_publisher, events_locations above)
    if (defined(my $http = $block->http_config)) {
        $http =~ s{^[ \t]*# events publisher\b([^\n]*)\n}
                  {events_publisher(placeholder_options($1))}meg
            and $block->set_value('http_config', $http);
    }

    return unless defined $block->config;

    my $config = $block->config;
    my $pg = $config =~ s/^\s*# pg api\s*$/$PG_API/m;
    $config =~ s/^\s*# api\s*$/$API/m;
    $config =~ s{^[ \t]*# events\b(?! publisher)([^\n]*)\n}
                {events_locations(placeholder_options($1))}meg;
    $block->set_value('config', $config);

    if (!defined $block->main_config) {
        $block->set_value('main_config', $MAIN_CONFIG);
    }

    if (!defined $block->http_config) {
        $block->set_value('http_config', $pg ? $PG_CONFIG : $HTTP_CONFIG);
    }
});

1;
