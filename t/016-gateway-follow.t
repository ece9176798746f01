# Events and stores follow a gateway change as they follow a heartbeat:
# a subscriber's stream gets one event per change (none for a plain
# refresh), PostgreSQL's status and last_seen, Redis's presence:{id} and
# Kafka's topic get the write-behind.

use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use PresenceTest;
use PresenceSSE;
use PresenceStores;
use PresenceKafka;
use HTTP::Tiny;

# a topic of this run's own: the mock broker lives as long as make test
$ENV{TEST_NGINX_KAFKA_TOPIC} = "presence-gw-t$$";

# the Kafka messages of one user: "status/seq/last_seen ..." in topic order
sub Test::Nginx::Util::user_log {
    my ($uid) = @_;
    my @m = grep { $_->[0] eq $uid }
            PresenceKafka::kafka_messages($ENV{TEST_NGINX_KAFKA_TOPIC});
    return join ' ', map {
        $_->[1] =~ /^\{"id":$uid,"status":"(\w+)","last_seen":(\d+),"seq":(\d+)(?(?{ $1 eq 'online' }),"activity":"active","devices":\["ws"\])\}$/
            ? "$1/$3/$2" : "bad:$_->[1]"
    } @m;
}

workers(2);
master_on();
no_shuffle();

# in logs/: the harness removes it with the server root (t/runner/README.md)
our $SSE = "$ENV{TEST_NGINX_SERVER_ROOT}/logs/sse.out";
our $GW = 'gateway-test-secret-0123456789';

# a heartbeat timeout longer than the block: only the gateway changes
our $HTTP = <<'CONF';
presence_zone name=presence size=4m;
presence_heartbeat_timeout 10s;
presence_auth_secret $TEST_NGINX_PRESENCE_SECRET;
presence_postgres "$TEST_NGINX_PG_DSN" pool=2 timeout=3s;
presence_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=500ms;
presence_kafka brokers=$TEST_NGINX_KAFKA_BROKERS topic=$TEST_NGINX_KAFKA_TOPIC;
presence_sync_interval 200ms;
presence_offline_grace 0;
# events publisher
CONF

# POST /v1/presence with the gateway secret -> the status code
sub gateway {
    my ($body, $type) = @_;
    my $r = HTTP::Tiny->new(timeout => 5)->request('POST',
        'http://127.0.0.1:' . ($ENV{TEST_NGINX_SERVER_PORT} || 1984)
        . '/v1/presence',
        { headers => { Authorization => "Bearer $GW",
                       'Content-Type' => $type // 'application/json' },
          content => $body });
    return $r->{status};
}

# nchan and the module loaded, $HTTP the blocks' http{} part
events_defaults($HTTP);

run_tests();

__DATA__

=== TEST 1: a gateway's online and gone reach a subscriber's stream and PostgreSQL, a refresh costs nothing
--- config
    # pg api
    location = /v1/presence {
        presence_gateway;
        presence_gateway_secret gateway-test-secret-0123456789;
    }
    # events
--- init
pg_reset(users => [[1001, 'alice'], [1002, 'bob'], [1003, 'carol']],
         subs => [[1002, 1001], [1002, 1003]]);
redis_cli('DEL', 'presence:1001', 'presence:1003');
my $sse = sse_start('/v1/events?ids=1001,1003&ticket=' . ticket(1002),
                    $main::SSE);
Test::More::is(main::gateway('{"device": "ws", "online": [1001, 1003]}'),
               204, 'gateway: 1001 and 1003 online');
for my $u (1001, 1003) {
    Test::More::ok(wait_for(3, sub { pg_state($u) =~ /^online,\d{13}$/ }),
                   "$u online in PostgreSQL") or Test::More::diag(pg_state($u));
}
# a plain refresh of 1001, 1003 gone (the text form)
Test::More::is(main::gateway("device ws\nonline 1001\ngone 1003\n", 'text/plain'), 204,
               'gateway: 1001 refreshed, 1003 gone');
my $st = self_status(1003);
Test::More::is($st->[0], 'offline', '1003 offline at once');
Test::More::ok(wait_for(3, sub { pg_state(1003) eq "offline,$st->[1]" }),
               "1003 offline in PostgreSQL, last_seen $st->[1] (when it left)")
    or Test::More::diag(pg_state(1003));
Test::More::like(pg_state(1001), qr/^online,/, '1001 still online there');
Test::More::ok(wait_for(3, sub { redis_state(1003) eq "offline,$st->[1],2" }),
               "1003 offline in Redis, last_seen $st->[1], seq 2")
    or Test::More::diag(redis_state(1003));
Test::More::like(redis_state(1001), qr/^online,\d{13},1$/,
                 '1001 online in Redis, seq 1');
Test::More::ok(wait_for(3, sub { user_log(1003) =~ m{^online/1/\d+ offline/2/$st->[1]$} }),
               "Kafka: 1003 online, then offline last seen $st->[1]")
    or Test::More::diag(user_log(1003));
Test::More::like(user_log(1001), qr{^online/1/\d+$},
                 'Kafka: one message of 1001, the refresh none');
Time::HiRes::sleep(0.5);
sse_stop($sse);
my ($ev) = sse_read($main::SSE);
my @data = sort map { $_->{data} } @$ev;
Test::More::is(scalar @data, 3, 'three events: two online, one offline')
    or Test::More::diag(join "\n", @data);
Test::More::like($data[0] // '',
    qr/^\{"id":1001,"status":"online","last_seen":\d{13},"seq":1,"activity":"active","devices":\["ws"\]\}$/,
    '1001 online');
Test::More::like($data[1] // '',
    qr/^\{"id":1003,"status":"offline","last_seen":$st->[1],"seq":2\}$/,
    '1003 offline, last seen when it left');
Test::More::like($data[2] // '',
    qr/^\{"id":1003,"status":"online","last_seen":\d{13},"seq":1,"activity":"active","devices":\["ws"\]\}$/,
    '1003 online');
--- request
GET /metrics
--- response_body_like eval
qr/presence_events_published_total 3\n.*presence_events_dropped_total 0\n/s
--- timeout: 10



=== TEST 2: a body of many slices: every id applied, events and stores as for heartbeats
The node applies 500 ids a turn of its event loop.  1003 is online first;
then one body: 2,499 more online (1001 among them; 1001 and 1003 watched)
and 1003 gone, in the last slice; the answer comes once all are applied.
--- config
    # pg api
    location = /v1/presence {
        presence_gateway;
        presence_gateway_secret gateway-test-secret-0123456789;
    }
    # events
--- init
psql("TRUNCATE users, users_subscribers RESTART IDENTITY CASCADE;\n"
     . "INSERT INTO users (user_id, user_name) SELECT g, 'u' || g "
     . "FROM generate_series(1, 2500) g;\n"
     . "INSERT INTO users_subscribers (user_id, user_id_t) VALUES (1002, 1001), (1002, 1003);\n");
redis_cli('DEL', 'presence:1001', 'presence:1003', 'presence:2500');
my $sse = sse_start('/v1/events?ids=1001,1003&ticket=' . ticket(1002),
                    $main::SSE);
Test::More::is(main::gateway('{"device": "ws", "online": [1003]}'), 204,
               'gateway: 1003 online');
Test::More::is(main::gateway('{"device": "ws", "online": ['
                             . join(',', grep { $_ != 1003 } 1 .. 2500)
                             . '], "gone": [1003]}'),
               204, 'gateway: 2,499 more online, 1003 gone');
Test::More::ok(wait_for(3, sub { self_status(2500)->[0] eq 'online' }),
               'the last id online');
Test::More::is(self_status(1003)->[0], 'offline', '1003 offline at the answer');
Test::More::ok(wait_for(5, sub { pg_value("SELECT count(*) FROM users WHERE status = 'online'") eq '2499' }),
               '2,499 online in PostgreSQL')
    or Test::More::diag(pg_value("SELECT count(*) FROM users WHERE status = 'online'"));
Test::More::ok(wait_for(3, sub { redis_state(2500) =~ /^online,\d{13},1$/ }),
               '2500 online in Redis') or Test::More::diag(redis_state(2500));
Test::More::ok(wait_for(3, sub { redis_state(1003) =~ /^offline,\d{13},2$/ }),
               '1003 offline in Redis, seq 2') or Test::More::diag(redis_state(1003));
# the topic is the file's: TEST 1's messages of 1003 come first
Test::More::ok(wait_for(3, sub { user_log(1003) =~ m{ offline/2/\d+$} }),
               'Kafka: 1003 offline, seq 2, last') or Test::More::diag(user_log(1003));
Time::HiRes::sleep(0.5);
sse_stop($sse);
my ($ev) = sse_read($main::SSE);
my @data = sort map { $_->{data} } @$ev;
Test::More::is(scalar @data, 3, 'three events: two online, one offline')
    or Test::More::diag(join "\n", @data);
--- request
GET /metrics
--- response_body_like eval
qr/presence_online_users 2499\n.*presence_heartbeats_total 2500\n.*presence_transitions_total\{to="online"\} 2500\npresence_transitions_total\{to="offline"\} 1\n.*presence_events_published_total 2501\n.*presence_events_dropped_total 0\n/s
--- timeout: 10



=== TEST 3: a client that closes mid-apply: every id is still applied
10,000 ids sent, the connection reset once the first id is online: the
node goes on applying its 20 slices, then its answer finds no client.
--- config
    # pg api
    location = /v1/presence {
        presence_gateway;
        presence_gateway_secret gateway-test-secret-0123456789;
    }
    # events
--- init
use IO::Socket::INET;
use Socket qw(SOL_SOCKET SO_LINGER);
psql("TRUNCATE users, users_subscribers RESTART IDENTITY CASCADE;\n"
     . "INSERT INTO users (user_id, user_name) SELECT g, 'u' || g "
     . "FROM generate_series(1, 10000) g;\n");
my $body = '{"device": "ws", "online": [' . join(',', 1 .. 10000) . ']}';
my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                              PeerPort => PresenceStores::port())
    or die "connect: $!";
print $s "POST /v1/presence HTTP/1.1\r\nHost: localhost\r\n"
    . "Authorization: Bearer $main::GW\r\nContent-Type: application/json\r\n"
    . "Content-Length: " . length($body) . "\r\n\r\n$body";
$s->flush;
# once the node has begun (its status reads are served between slices),
# a reset, not a FIN: the node's answer fails
my $end = Time::HiRes::time() + 5;
until ((self_status(1)->[0] // '') eq 'online' || Time::HiRes::time() > $end) { }
my $mid = (self_status(10000)->[0] // '') ne 'online';
setsockopt($s, SOL_SOCKET, SO_LINGER, pack('ii', 1, 0));
close $s;
Test::More::note($mid ? 'reset mid-apply' : 'reset after the apply');
Test::More::ok(wait_for(5, sub { self_status(10000)->[0] eq 'online' }),
               'the last id online');
Test::More::ok(wait_for(5, sub { pg_value("SELECT count(*) FROM users WHERE status = 'online'") eq '10000' }),
               '10,000 online in PostgreSQL')
    or Test::More::diag(pg_value("SELECT count(*) FROM users WHERE status = 'online'"));
--- request
GET /metrics
--- response_body_like eval
qr/presence_online_users 10000\n.*presence_heartbeats_total 10000\n.*presence_transitions_total\{to="online"\} 10000\n.*presence_events_dropped_total 0\n/s
--- timeout: 10
