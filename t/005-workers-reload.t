# The table is shared by the workers and survives a reload; a killed
# worker wedges nothing.  Requests go through a proxy to a reuseport
# listener, so the kernel spreads them over both workers.

use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use PresenceTest;

$ENV{TEST_NGINX_PORT2} ||= 1990;

our $HTTP_CONFIG = <<'CONF';
    presence_zone name=presence size=4m;
    presence_heartbeat_timeout 60s;
    presence_auth_secret $TEST_NGINX_PRESENCE_SECRET;

    server {
        listen 127.0.0.1:$TEST_NGINX_PORT2 reuseport;

        location = /v1/heartbeat { presence_heartbeat; }
        location = /v1/heartbeat-short {
            presence_heartbeat_timeout 300ms;
            presence_heartbeat;
        }
        location /v1/status { presence_status; }
        location = /metrics { presence_metrics; }
        location = /pause { return 204; }
    }
CONF

our @USERS = (1 .. 20);

workers(2);
master_on();
use_hup();
no_shuffle();
run_tests();

__DATA__

=== TEST 1: heartbeats on one worker are seen by the other
--- http_config eval: $::HTTP_CONFIG
--- config
    location /v1/ { proxy_pass http://127.0.0.1:$TEST_NGINX_PORT2; }
    location = /metrics { proxy_pass http://127.0.0.1:$TEST_NGINX_PORT2; }
    location = /pause { return 204; }
--- request eval
[map { ("POST /v1/heartbeat", "GET /v1/status/$_") } @::USERS]
--- more_headers eval
[map { (bearer($_), bearer($_)) } @::USERS]
--- error_code eval
[map { (204, 200) } @::USERS]
--- response_body_like eval
[map { (qr/^$/, qr/^\{"id":$_,"status":"online","last_seen":\d{13},"seq":1,"activity":"active","devices":\["default"\]\}$/) } @::USERS]



=== TEST 2: after nginx -s reload every user is still online, seq unchanged
--- http_config eval: $::HTTP_CONFIG
--- config
    location /v1/ { proxy_pass http://127.0.0.1:$TEST_NGINX_PORT2; }
    location = /metrics { proxy_pass http://127.0.0.1:$TEST_NGINX_PORT2; }
    location = /pause { return 204; }
--- request eval
[(map { "GET /v1/status/$_" } @::USERS), "GET /metrics"]
--- more_headers eval
[(map { bearer($_) } @::USERS), ""]
--- error_code eval
[map { 200 } 0 .. @::USERS]
--- response_body_like eval
[(map { qr/^\{"id":$_,"status":"online","last_seen":\d{13},"seq":1,"activity":"active","devices":\["default"\]\}$/ } @::USERS),
 qr/\npresence_online_users 20\n.*\npresence_tracked_users 20\n.*\npresence_heartbeats_total 20\n.*\npresence_transitions_total\{to="online"\} 20\n/s]



=== TEST 3: a worker killed with -9: the others go on, the table is intact
--- init
my $pid = `cat $Test::Nginx::Util::PidFile`;
chomp $pid;
my @workers = split /\s+/, `pgrep -P $pid`;
kill 9, $workers[0] if @workers;
select undef, undef, undef, 0.3;
--- request eval
[(map { "GET /v1/status/$_" } @::USERS), ("POST /v1/heartbeat-short") x 4,
 PresenceTest::pause(1), "GET /v1/status/21"]
--- more_headers eval
[(map { bearer($_) } @::USERS), (bearer(21)) x 4, "", bearer(21)]
--- error_code eval
[(map { 200 } @::USERS), 204, 204, 204, 204, 204, 200]
--- response_body_like eval
[(map { qr/^\{"id":$_,"status":"online","last_seen":\d{13},"seq":1,"activity":"active","devices":\["default"\]\}$/ } @::USERS),
 (qr/^$/) x 5, qr/^\{"id":21,"status":"offline","last_seen":\d{13},"seq":2\}$/]
--- no_error_log
[error]
[crit]
