# Write-behind to Kafka: one message per change, key = the user id, value =
# the event JSON, in order per user, within 2 s; while the broker is down
# heartbeats go on and the messages wait, delivered once it is back.

use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use PresenceTest;
use PresenceStores;
use PresenceKafka;

# a topic of this run's own: the mock broker lives as long as make test
$ENV{TEST_NGINX_KAFKA_TOPIC} = "presence-t$$";

our $HTTP_CONFIG = <<'CONF';
    presence_zone name=presence size=4m;
    presence_heartbeat_timeout 500ms;
    presence_auth_secret $TEST_NGINX_PRESENCE_SECRET;
    presence_kafka brokers=$TEST_NGINX_KAFKA_BROKERS
                   topic=$TEST_NGINX_KAFKA_TOPIC;
    presence_sync_interval 200ms;
CONF

# "--- init" runs in Test::Nginx::Util
for my $name (qw(kafka_messages kafka_down kafka_up)) {
    no strict 'refs';
    *{"Test::Nginx::Util::$name"} = \&{"PresenceKafka::$name"};
}

# the messages of one user: "status/seq/last_seen ..." in topic order; an
# online one with its devices (none when it went out after the user was
# offline again: the broker was down)
sub Test::Nginx::Util::user_log {
    my ($uid) = @_;
    my @m = grep { $_->[0] eq $uid } kafka_messages($ENV{TEST_NGINX_KAFKA_TOPIC});
    return join ' ', map {
        $_->[1] =~ /^\{"id":$uid,"status":"(\w+)","last_seen":(\d+),"seq":(\d+)(?(?{ $1 eq 'online' }),"activity":"active","devices":\[(?:"default")?\])\}$/
            ? "$1/$3/$2" : "bad:$_->[1]"
    } @m;
}

workers(2);
master_on();
no_shuffle();
run_tests();

__DATA__

=== TEST 1: every change is one message, keyed, in order, within 2 s
--- http_config eval: $::HTTP_CONFIG
--- config
    # api
--- init
my @want;
heartbeat(1) == 204 or die;
push @want, 'online/1/' . self_status(1)->[1];
api('PUT', '/v1/status', 1, '{"status":"offline"}')->[0] == 200 or die;
push @want, 'offline/2/' . self_status(1)->[1];
api('PUT', '/v1/status', 1, '{"status":"online"}')->[0] == 200 or die;
my $ls = self_status(1)->[1];
push @want, "online/3/$ls";
# silence: offline at 500 ms, last seen at the PUT
push @want, "offline/4/$ls";
ok(wait_for(2.5, sub { user_log(1) eq "@want" }), 'user 1: four messages, in order')
    or diag('got: ' . user_log(1) . "\nwant: @want");
heartbeat(2) == 204 or die;
my $ls2 = self_status(2)->[1];
ok(wait_for(2, sub { user_log(2) =~ m{^online/1/$ls2(?: offline/2/$ls2)?$} }),
   'user 2 online within 2 s')
    or diag(user_log(2));
ok(wait_for(2, sub { user_log(2) eq "online/1/$ls2 offline/2/$ls2" }),
   'and offline after its timeout');
is(user_log(3), '', 'no message about a user that did not change');
is(scalar(kafka_messages($ENV{TEST_NGINX_KAFKA_TOPIC})), 6, 'six changes, six messages');
ok(wait_for(2, sub { metric('presence_sync_written_total{sink="kafka"}') >= 6 }),
   'acknowledged messages counted');
--- request
GET /pause
--- error_code: 204



=== TEST 2: the broker down: heartbeats go on, messages are delivered once it is back
--- http_config eval: $::HTTP_CONFIG
--- config
    # api
--- init
kafka_down();
my $errors = 0;
my @want;
for my $u (5, 6) {
    heartbeat($u) == 204 or $errors++;
    push @want, "$u:online/1/" . self_status($u)->[1];
}
api('PUT', '/v1/status', 5, '{"status":"offline"}')->[0] == 200 or $errors++;
push @want, '5:offline/2/' . self_status(5)->[1];
my $end = now() + 2;
while (now() < $end) { heartbeat(6) == 204 or $errors++; nap(0.1) }
is($errors, 0, 'no error answer while the broker is down');
ok(metric('presence_sync_queue{sink="kafka"}') >= 3, 'the messages wait');
ok(wait_for(2, sub { self_status(6)->[0] eq 'offline' }), 'user 6 fell silent');
my %ls = map { /^(\d):(\w+)\/\d\/(\d+)$/ ? ("$1$2" => $3) : () } @want;
my $want5 = "online/1/$ls{'5online'} offline/2/$ls{'5offline'}";
my $want6 = "online/1/$ls{'6online'} offline/2/" . self_status(6)->[1];
kafka_up();
ok(wait_for(10, sub { user_log(5) eq $want5 && user_log(6) eq $want6 }),
   'delivered once the broker is back, once each, in order')
    or diag('5: ' . user_log(5) . '; 6: ' . user_log(6) . "; want $want5; $want6");
ok(wait_for(3, sub { metric('presence_sync_queue{sink="kafka"}') == 0 }), 'nothing left waiting');
--- request
GET /pause
--- error_code: 204
--- no_error_log
[alert]
[crit]
[emerg]
