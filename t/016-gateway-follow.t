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
