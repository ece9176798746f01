package PresenceTest;

# Helpers shared by the Test::Nginx files of the presence module: tokens,
# the module's default configuration, and a pause between two requests.
# Works the same under the real Test::Nginx and under t/runner.

use strict;
use warnings;

use Cwd ();
use Digest::SHA qw(hmac_sha256);
use MIME::Base64 qw(encode_base64url);
use Test::Nginx::Socket ();

our @EXPORT = qw(token bearer pause error_like psql pg_reset pg_stop pg_start);
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

# PostgreSQL of the test run, started by util/services.sh (make test).
our $PG_DSN = $ENV{TEST_NGINX_PG_DSN}
    || 'host=127.0.0.1 port=55432 dbname=presence_test user=presence password=presence';
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

    return unless defined $block->config;

    my $config = $block->config;
    my $pg = $config =~ s/^\s*# pg api\s*$/$PG_API/m;
    $config =~ s/^\s*# api\s*$/$API/m;
    $block->set_value('config', $config);

    if (!defined $block->main_config) {
        $block->set_value('main_config', $MAIN_CONFIG);
    }

    if (!defined $block->http_config) {
        $block->set_value('http_config', $pg ? $PG_CONFIG : $HTTP_CONFIG);
    }
});

1;
