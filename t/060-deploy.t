# What docker/ and docker/k8s ship, checked without a Docker engine:
# docker-compose config (three cluster nodes, Kafka required, the LB with
# the module), nginx -t of every nginx configuration of the repository
# (conf/nginx.conf as util/run.sh renders it, the node and the LB of
# docker/ with their paths and hosts made local), a node started from what
# docker/entrypoint.sh renders, the image's health check against it and
# its preStop drain, the schema of sql/ applied twice, the Dockerfile's
# packages against the libraries the module links, and the Kubernetes
# manifests (readiness on the catch-up, the preStop, stable node names).

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Cwd ();
use File::Path ();
use HTTP::Tiny ();
use Time::HiRes ();
use YAML::XS ();
use PresenceTest qw(psql);
use PresenceDeploy;

my $P = $ENV{TEST_NGINX_SERVER_PORT} || 1984;
my $root = ($ENV{TEST_NGINX_SERVROOT} || Cwd::abs_path('t') . '/servroot')
           . '-deploy';
my $redis_port = $ENV{TEST_NGINX_REDIS_PORT} || 56379;
my $dsn = $PresenceTest::PG_DSN;
my $nginx = $PresenceDeploy::NGINX;
my @nodes = qw(presence1 presence2 presence3);
# the cluster core (presence_cluster, presence_health, $presence_user) is
# in this build once the cluster's branch is merged
my $cluster_core = module_has('presence_cluster') && module_has('presence_health')
                   && module_has('presence_user');
diag("this build of the module has no cluster core (presence_cluster, "
     . "presence_health, \$presence_user): the checks that need it are "
     . "skipped, /healthz of the rendered nodes says ok and the LB hashes "
     . "\$presence_caller") unless $cluster_core;

system('rm', '-rf', $root);
File::Path::make_path($root);

sub nginx_t {
    my ($dir, $name) = @_;
    my $out = `$nginx -t -p $dir/ -c $dir/nginx.conf 2>&1`;
    ok($? == 0 && $out =~ /test is successful/, "nginx -t: $name")
        or diag($out);
}


# 1. docker-compose.yml

{
    # the passwords are required (no default): without them, no config
    my $out = `env -u PRESENCE_PG_PASSWORD -u PRESENCE_REDIS_PASSWORD docker-compose -f docker/docker-compose.yml config 2>&1`;
    isnt($?, 0, "docker-compose config fails without the passwords")
        or diag($out);
    like($out, qr/PRESENCE_(?:PG|REDIS)_PASSWORD/, "naming the variable");
    my $raw = slurp('docker/docker-compose.yml');
    my @defaults = grep { /PASSWORD[^}\n]*:-/ } split /\n/, $raw;
    ok(!@defaults, "compose: no password has a default") or diag("@defaults");

    local $ENV{PRESENCE_PG_PASSWORD} = 'pg-secret-of-the-test';
    local $ENV{PRESENCE_REDIS_PASSWORD} = 'redis-secret-of-the-test';
    $out = `docker-compose -f docker/docker-compose.yml config 2>&1`;
    is($?, 0, "docker-compose config") or diag($out);
    my $c = eval { YAML::XS::Load($out) } || {};
    my $s = $c->{services} || {};

    is_deeply([sort keys %$s],
              [sort qw(kafka kafka-init lb postgres redis), @nodes],
              "compose: the stores, three nodes and the LB");
    like($s->{postgres}{image} // '', qr/^postgres:15\b/, "compose: PostgreSQL 15");
    ok((grep { /\/sql:\/docker-entrypoint-initdb\.d\b/ }
        @{ $s->{postgres}{volumes} || [] }),
       "compose: sql/ is PostgreSQL's init directory");
    like($s->{redis}{image} // '', qr/^redis:/, "compose: Redis");
    my $k = $s->{kafka}{environment} || {};
    like($k->{KAFKA_PROCESS_ROLES} // '', qr/controller/,
         "compose: Kafka in KRaft mode (its own controller)");
    ok(!(grep { /ZOOKEEPER/ } keys %$k), "compose: no ZooKeeper");
    ok(@{ $s->{kafka}{healthcheck}{test} || [] }, "compose: Kafka has a health check");
    my $init = join ' ', @{ $s->{'kafka-init'}{command} || [] };
    like($init, qr/kafka-topics\.sh .*--create\b.*--topic presence\b/,
         "compose: kafka-init creates the topic presence");
    like($init, qr/--config cleanup\.policy=compact\b/,
         "compacted (the latest state of every user, for a starting node)");
    my %names;
    for my $n (@nodes) {
        is($s->{$n}{command}[0], 'node', "compose: $n is a node");
        my $e = $s->{$n}{environment} || {};
        is($e->{PRESENCE_NODE}, $n, "compose: $n is presence_cluster node=$n");
        $names{ $e->{PRESENCE_NODE} // '' }++;
        like($e->{PRESENCE_KAFKA} // '', qr/^kafka:9092$/,
             "compose: $n gets Kafka (required)");
        my $d = $s->{$n}{depends_on} || {};
        is(join(',', map { "$_=" . ($d->{$_}{condition} // '') } sort keys %$d),
           'kafka=service_healthy,kafka-init=service_completed_successfully,'
           . 'postgres=service_healthy,redis=service_healthy',
           "compose: $n starts once the stores are up and the topic exists");
        is($s->{$n}{healthcheck}{test}[1] // '', '/usr/local/bin/presence-healthcheck',
           "compose: $n is healthy once ready (its replica caught up)");
        is($s->{$n}{stop_signal} // '', 'SIGQUIT', "compose: $n stops gracefully");
        ok($s->{$n}{read_only}, "compose: $n has a read-only root");
        is($s->{$n}{environment}{PRESENCE_PG_PASSWORD}, 'pg-secret-of-the-test',
           "compose: $n gets the PostgreSQL password");
        is($s->{$n}{environment}{PRESENCE_REDIS_PASSWORD},
           'redis-secret-of-the-test', "compose: $n gets the Redis password");
    }
    is(scalar(grep { $_ == 1 } values %names), scalar @nodes,
       "compose: every node has a name of its own");
    is($s->{postgres}{environment}{POSTGRES_PASSWORD}, 'pg-secret-of-the-test',
       "compose: PostgreSQL's password is the one given");
    my $rcmd = join ' ', @{ $s->{redis}{command} || [] };
    like($rcmd, qr/--requirepass\b/, "compose: Redis requires a password");
    like(join(' ', @{ $s->{redis}{healthcheck}{test} || [] })
         . ' ' . join(' ', %{ $s->{redis}{environment} || {} }),
         qr/REDISCLI_AUTH|-a\b/, "compose: Redis's health check authenticates");
    unlike(slurp('doc/deploy.md'), qr/chmod\s+[0-7]*[4-7][0-7]*4\b|chmod\s+(?:a|o)\+r/,
           "doc/deploy.md: the key file is not made world-readable");
    like(slurp('doc/deploy.md'), qr/chmod\s+0?6[04]0\s+docker\/presence_secret/,
         "doc/deploy.md: the key file 0600/0640");
    ok((grep { m{^/?docker/presence_secret$} } split /\n/, slurp('.gitignore')),
       ".gitignore: docker/presence_secret");
    is($s->{lb}{command}[0], 'lb', "compose: lb runs the LB");
    is($s->{lb}{ports}[0]{target}, 8080, "compose: lb is published");
    ok((grep { ($_->{source} // $_) eq 'presence_secret' } @{ $s->{lb}{secrets} || [] }),
       "compose: the LB has the tokens' key (the module verifies \$presence_user)");
    is(join(',', map { "$_=" . ($s->{lb}{depends_on}{$_}{condition} // '') }
                 sort keys %{ $s->{lb}{depends_on} || {} }),
       join(',', map { "$_=service_healthy" } @nodes),
       "compose: the LB starts once the three nodes are ready");
}


# 2. nginx -t of every shipped configuration

{
    # conf/nginx.conf, rendered as util/run.sh does
    my $dir = "$root/conf";
    File::Path::make_path("$dir/logs", "$dir/tmp");
    open my $f, '>', "$dir/secret" or die; print $f "x" x 32; close $f;
    # the gateways' key (POST /v1/presence), as util/run.sh makes it
    open $f, '>', "$dir/gateway-secret" or die; print $f "y" x 32; close $f;
    my $conf = slurp('conf/nginx.conf');
    my %v = (MODULE_DIR => $PresenceDeploy::MODULE_DIR, PREFIX => $dir,
             PG_DSN => $dsn, PORT => $P, HTML => Cwd::abs_path('conf/html'),
             REDIS_PORT => $redis_port,
             REDIS_PASSWORD => $ENV{TEST_NGINX_REDIS_PASSWORD} || 'x',
             KAFKA_BROKERS => $ENV{TEST_NGINX_KAFKA_BROKERS} || '127.0.0.1:9092');
    $conf =~ s/\@(\w+)\@/$v{$1} \/\/ die "conf\/nginx.conf: \@$1\@ unknown"/ge;
    open $f, '>', "$dir/nginx.conf" or die; print $f $conf; close $f;
    PresenceTest::write_shipped($dir);
    nginx_t($dir, 'conf/nginx.conf');

    render_node(dir => "$root/node", port => $P, pg_dsn => $dsn,
                redis_port => $redis_port);
    nginx_t("$root/node", 'docker/nginx-node.conf');
    my $node = slurp("$root/node/nginx.conf");
    like($node, qr/^\s*presence_redis\s+\S+\s+password=\S+;/m,
         "the node gives presence_redis a password");
    like($node, qr/upstream presence_nchan_redis \{[^}]*^\s*nchan_redis_password\s+\S+;/ms,
         "and nchan's Redis");
    unlike($node, qr{redis://:[^@\s]*\@}, "not in a URL");

    # a cluster node: presence_cluster node= beside presence_kafka, the
    # readiness on /healthz (presence_health), the liveness on /livez, the
    # drain of docker/prestop.sh
    my $raw = slurp('docker/nginx-node.conf');
    my ($http_main) = $raw =~ /^http \{\n(.*?)^    server \{/ms;
    like($http_main // '', qr/^\s*presence_kafka\s+brokers=\@KAFKA\@\s/m,
         "the node writes the log to Kafka");
    like($http_main // '', qr/^\s*presence_cluster\s+node=\@NODE\@;/m,
         "the node is presence_cluster node=\@NODE\@ (in http{})");
    my ($probes) = $raw =~ /^    server \{\n\s*listen\s+9145;(.*?)^    \}/ms;
    like($probes // '', qr/^\s*location = \/healthz \{\s*presence_health;\s*\}/m,
         "port 9145: /healthz is the readiness (presence_health)");
    like($probes // '', qr/^\s*location = \/livez \{[^}]*return\s+200\b/m,
         "port 9145: /livez is the liveness (nginx answers)");
    like($probes // '', qr#if \(-f /var/lib/presence/draining\) \{\s*rewrite\s+\^/healthz\$\s+/draining\s+last;\s*\}#ms,
         "port 9145: /healthz is not ready while the node drains");
    like($probes // '', qr#location = /draining \{[^}]*internal;[^}]*return\s+503\b#ms,
         "the drain answers 503");
    SKIP: {
        skip "nginx -t of a cluster node: this build has no presence_cluster "
             . "(the cluster core is merged from h-cluster)", 2
            unless $cluster_core;
        skip "nginx -t of a cluster node needs the test's Kafka "
             . "(TEST_NGINX_KAFKA_BROKERS): presence_cluster refuses to run "
             . "without presence_kafka", 2
            unless $ENV{TEST_NGINX_KAFKA_BROKERS};
        render_node(dir => "$root/cluster", port => $P, pg_dsn => $dsn,
                    redis_port => $redis_port, node => 'presence1');
        like(slurp("$root/cluster/nginx.conf"),
             qr/^\s*presence_cluster\s+node=presence1;/m,
             "rendered: presence_cluster node=presence1");
        nginx_t("$root/cluster", 'docker/nginx-node.conf as the cluster node presence1');
    }

    # the LB loads the module and hashes the verified user
    my $lb = slurp('docker/nginx-lb.conf');
    like($lb, qr{^load_module\s+/usr/lib/nginx/modules/ngx_http_presence_module\.so;}m,
         "the LB loads the module");
    like($lb, qr{^\s*presence_auth_secret_file\s+/run/secrets/presence_secret;}m,
         "with the nodes' key (the compose secret)");
    my ($up) = $lb =~ /^    upstream presence_nodes \{(.*?)^    \}/ms;
    like($up // '', qr/^\s*hash\s+\$presence_user\$presence_anonymous\s+consistent;/m,
         "the LB: hash \$presence_user consistent (the verified user, else the address)");
    is_deeply([($up // '') =~ /^\s*server\s+(\S+)/mg], [map { "$_:8080" } @nodes],
              "over the three nodes");
    like($up // '', qr/^\s*zone\s+presence_nodes\s+\d+k;/m,
         "the nodes' failure state in a zone, shared by the LB's workers");
    like($lb, qr/^    map \$presence_user \$presence_anonymous \{\s*""\s+\$remote_addr;\s*default\s+"";\s*\}/m,
         "no verified user: the client's address");
    unlike($lb, qr/\$http_authorization|\$arg_ticket|\$arg_token|\$presence_bearer/,
           "no key from the token's text");

    render_lb(dir => "$root/lb", port => $P, nodes => [$P + 1, $P + 2, $P + 3]);
    nginx_t("$root/lb", 'docker/nginx-lb.conf, with the module'
                        . ($cluster_core ? '' : ' ($presence_caller: no $presence_user in this build)'));

    # the key it hashes, shown by a location of the test
    {
        my $conf = slurp("$root/lb/nginx.conf");
        my ($key) = $conf =~ /^\s*hash\s+(\S+)\s+consistent;/m;
        $conf =~ s{(^        location = /healthz \{)}
                  {        location = /lb-key { return 200 "[$key]"; }\n$1}m
            or die "no /healthz in the LB";
        PresenceDeploy::spew("$root/lb/nginx.conf", $conf);
        nginx_start("$root/lb", $P);
        my $get = sub {
            my ($path, %h) = @_;
            my $r = HTTP::Tiny->new(timeout => 5)->get("http://127.0.0.1:$P$path",
                                                        { headers => \%h });
            return $r->{content} // '';
        };
        my $t1 = PresenceTest::token(42);
        my $t2 = PresenceTest::token(42, exp => time + 3600);
        is($get->('/lb-key', Authorization => "Bearer $t1"), '[42]',
           "LB key: the verified user of a bearer token");
        is($get->('/lb-key', Authorization => "Bearer $t2"), '[42]',
           "the same for another token of that user");
        is($get->('/lb-key?ticket=' . PresenceTest::ticket(42, route => $t1)), '[42]',
           "and for its stream ticket");
        is($get->('/lb-key', Authorization => 'Bearer '
                  . PresenceTest::token(42, secret => 'another-secret-0123456789')),
           '[127.0.0.1]', "a forged token: the client's address");
        is($get->('/lb-key'), '[127.0.0.1]', "no token: the client's address");
        nginx_stop("$root/lb");
    }

    my $cm = YAML::XS::LoadFile('docker/k8s/configmap.yaml');
    File::Path::make_path("$root/k8s");
    open $f, '>', "$root/k8s/node.conf" or die;
    print $f $cm->{data}{'nginx-node.conf'} // ''; close $f;
    render_node(src => "$root/k8s/node.conf", dir => "$root/k8s", port => $P,
                pg_dsn => $dsn, redis_port => $redis_port);
    nginx_t("$root/k8s", 'docker/k8s/configmap.yaml');

    my @confs = sort(glob('conf/*.conf'), glob('docker/*.conf'));
    is_deeply(\@confs, ['conf/nginx.conf', 'conf/presence-events.conf',
                        'conf/presence-publisher.conf',
                        'docker/nginx-lb.conf', 'docker/nginx-node.conf'],
              "every nginx configuration of the repository was tested "
              . "(the two presence-*.conf through the two that include them)");
}


# 2b. the nchan wiring is shipped once: conf/presence-publisher.conf (in
# http{}) and conf/presence-events.conf (in the API's server{}), included
# by both nginx configurations, copied into the image, rendered by
# util/run.sh and docker/entrypoint.sh, read by the tests' placeholders

{
    my $wiring = qr/^\s*(?:presence_publish|nchan_publisher|nchan_subscriber
                       |nchan_authorize_request|nchan_subscribe_request
                       |presence_events_auth|presence_stream)\s/xm;
    for my $file ('conf/nginx.conf', 'docker/nginx-node.conf') {
        my $conf = slurp($file);
        like($conf, qr/^http \{\n(?:(?!^\s*server\s*\{).)*^    include\s+presence-publisher\.conf;/ms,
             "$file includes presence-publisher.conf in http{}");
        like($conf, qr/^        include\s+presence-events\.conf;/m,
             "$file includes presence-events.conf in a server{}");
        unlike($conf, $wiring, "$file writes none of the wiring itself");
    }
    like(slurp('conf/presence-publisher.conf'), qr/^presence_publish\s/m,
         "conf/presence-publisher.conf holds presence_publish");
    like(slurp('conf/presence-events.conf'),
         qr/^location = \/v1\/events \{/m,
         "conf/presence-events.conf holds /v1/events");
    like(slurp('docker/Dockerfile'),
         qr{^COPY\s[^\n]*(?:\\\n[^\n]*)*conf/presence-publisher\.conf\s+conf/presence-events\.conf\s+/etc/presence/}m,
         "the image has them in /etc/presence");
    for my $file ('util/run.sh', 'docker/entrypoint.sh') {
        like(slurp($file), qr/for f in presence-publisher\.conf presence-events\.conf; do/,
             "$file renders them");
    }
    for my $name (@PresenceTest::SHIPPED) {
        my @left = grep { !/^\s*#/ && /\@[A-Z_]+\@/ }
                   split /\n/, slurp("$root/conf/$name");
        ok(!@left, "$name: no parameter left once rendered") or diag("@left");
    }
    # (t/020 has a presence_publish of its own: no publisher, no server)
    my $server = qr/^\s*(?:nchan_publisher|nchan_subscriber|nchan_authorize_request
                       |presence_events_auth|presence_stream)\s/xm;
    my @tests = grep { slurp($_) =~ $server } glob('t/*.t');
    is_deeply(\@tests, [], "no test writes the wiring itself (# events placeholders)");
}


# 3. docker/entrypoint.sh renders a node that works, and the image's
# health check sees it

{
    my $dir = "$root/entry";
    my ($pg_port) = $dsn =~ /port=(\d+)/;
    my ($pg_db) = $dsn =~ /dbname=(\S+)/;

    # /etc/presence of the image (docker/Dockerfile)
    my $etc = "$root/etc";
    File::Path::make_path($etc);
    system('cp', 'docker/nginx-node.conf', 'docker/nginx-lb.conf',
           map({ "conf/$_" } @PresenceTest::SHIPPED), $etc) == 0 or die;

    local %ENV = (%ENV, PRESENCE_PREFIX => $dir, PRESENCE_CONF_DIR => $etc,
                  PRESENCE_RENDER_ONLY => 1, PRESENCE_PG_HOST => 'localhost',
                  PRESENCE_PG_PORT => $pg_port, PRESENCE_PG_DB => $pg_db,
                  PRESENCE_REDIS_HOST => 'localhost',
                  PRESENCE_REDIS_PORT => $redis_port,
                  PRESENCE_REDIS_PASSWORD => $ENV{TEST_NGINX_REDIS_PASSWORD}
                                             // '',
                  PRESENCE_KAFKA => $ENV{TEST_NGINX_KAFKA_BROKERS}
                                    || '127.0.0.1:9092');
    delete @ENV{qw(PRESENCE_PG_PASSWORD PRESENCE_PG_PASSWORD_FILE
                   PRESENCE_KAFKA_OPTIONS PRESENCE_NODE)};

    # no password, no node: there is no default password
    isnt(system('sh docker/entrypoint.sh node 2>/dev/null'), 0,
         "entrypoint refuses a node without a PostgreSQL password");
    {
        local $ENV{PRESENCE_PG_PASSWORD} = 'x';
        local $ENV{PRESENCE_REDIS_PASSWORD} = '';
        isnt(system('sh docker/entrypoint.sh node 2>/dev/null'), 0,
             "and without a Redis password");
    }

    # a cluster node needs Kafka (its replica is built from the log), and a
    # name presence_cluster takes
    {
        local $ENV{PRESENCE_PG_PASSWORD} = 'x';
        local $ENV{PRESENCE_KAFKA} = '';
        my $out = `sh docker/entrypoint.sh node 2>&1`;
        isnt($?, 0, "entrypoint refuses a node without PRESENCE_KAFKA");
        like($out, qr/^entrypoint: set PRESENCE_KAFKA\b.*needs Kafka/m,
             "saying why") or diag($out);
        ok(!-e "$dir/nginx.conf", "before it renders anything");
    }
    for my $bad ('a/b', 'x' x 65, 'a b') {
        local $ENV{PRESENCE_PG_PASSWORD} = 'x';
        local $ENV{PRESENCE_NODE} = $bad;
        my $out = `sh docker/entrypoint.sh node 2>&1`;
        isnt($?, 0, "entrypoint refuses the node name '"
                    . substr($bad, 0, 8) . "...'");
        like($out, qr/^entrypoint: PRESENCE_NODE /m, "naming PRESENCE_NODE");
    }

    # a password libpq's passfile must carry; it is in no nginx.conf
    {
        local $ENV{PRESENCE_PG_PASSWORD} = q{p'a\\s"s|&:x};
        is(system('sh', 'docker/entrypoint.sh', 'node'), 0,
           "entrypoint renders a node");
        my $host = `hostname`;
        chomp $host;
        like(slurp("$dir/nginx.conf"),
             qr/^\s*presence_cluster\s+node=\Q$host\E;/m,
             "presence_cluster node= the hostname by default");
        for my $name (@PresenceTest::SHIPPED) {
            my $inc = eval { slurp("$dir/$name") } // '';
            like($inc, qr{^[ \t]*(?:listen|proxy_pass)\s+(?:http://)?unix:\Q$dir\E/publish\.sock[:;]}m,
                 "entrypoint renders $name beside it, the socket in the prefix");
            unlike($inc, qr/^[^#\n]*\@[A-Z_]+(?:=[^\@]*)?\@/m,
                   "no parameter left in $name");
        }
        my $conf = slurp("$dir/nginx.conf");
        my ($arg) = $conf =~ /^\s*presence_postgres\s+"((?:[^"\\]|\\.)*)"/m;
        (my $nginx_value = $arg // '') =~ s/\\(["'\\])/$1/g;
        like($nginx_value, qr/^host=127\.0\.0\.1 port=$pg_port /,
             "entrypoint: localhost resolved to an address");
        unlike($nginx_value, qr/password=/,
               "entrypoint: no password in the conninfo");
        unlike($conf, qr/p'a/, "nor anywhere in nginx.conf");
        like($nginx_value, qr/ passfile='\Q$dir\E\/pgpass'/,
             "the conninfo names the passfile");
        is(eval { slurp("$dir/pgpass") }, qq{*:*:*:*:p'a\\\\s"s|&\\:x\n},
           "the passfile holds it, : and \\ escaped");
        is(sprintf('%04o', (stat "$dir/pgpass")[2] & 07777), '0600',
           "the passfile is mode 0600");
    }

    # Kafka over SASL/TLS: librdkafka's properties on presence_kafka
    {
        local $ENV{PRESENCE_PG_PASSWORD} = 'x';
        local $ENV{PRESENCE_NODE} = 'presence-2';
        local $ENV{PRESENCE_KAFKA_OPTIONS} = 'security.protocol=SASL_SSL '
            . 'sasl.mechanism=SCRAM-SHA-512 sasl.username=presence '
            . 'sasl.password=kafka-secret';
        is(system('sh', 'docker/entrypoint.sh', 'node'), 0,
           "entrypoint renders a node with Kafka's SASL/TLS options");
        like(slurp("$dir/nginx.conf"),
             qr/^\s*presence_kafka\s+brokers=\S+\s+topic=presence\s+security\.protocol=SASL_SSL sasl\.mechanism=SCRAM-SHA-512 sasl\.username=presence sasl\.password=kafka-secret;/m,
             "presence_kafka gets them");
        like(slurp("$dir/nginx.conf"), qr/^\s*presence_cluster\s+node=presence-2;/m,
             "presence_cluster node=\$PRESENCE_NODE");
        render_node(src => "$dir/nginx.conf", dir => "$root/kafka-sasl",
                    port => $P, pg_dsn => 'unused', redis_port => $redis_port);
        nginx_t("$root/kafka-sasl", 'a node with Kafka over SASL_SSL');
        like(slurp('doc/deploy.md'), qr/PRESENCE_KAFKA_OPTIONS.*security\.protocol=SASL_SSL/s,
             "doc/deploy.md shows how");
    }

    # the password of the test's PostgreSQL, from a file (a secret)
    my ($pg_pw) = (eval { slurp($ENV{TEST_NGINX_PG_PASSFILE} // '') } // '')
                  =~ /^[^:\n]*:[^:\n]*:[^:\n]*:presence:(.*)$/m;
    open my $pw, '>', "$root/pg-password" or die; print $pw "$pg_pw\n" if defined $pg_pw; close $pw;
    local $ENV{PRESENCE_PG_PASSWORD_FILE} = "$root/pg-password";
    is(system('sh', 'docker/entrypoint.sh', 'node'), 0,
       "entrypoint renders a node (its password from PRESENCE_PG_PASSWORD_FILE)");
    # the workers read it (in the image they and the entrypoint are presence)
    if ($> == 0) {
        system('chown', '-R', $ENV{TEST_NGINX_WORKER_USER} || 'presence', $dir);
    }
    render_node(src => "$dir/nginx.conf", dir => $dir, port => $P,
                metrics_port => $P + 1, pg_dsn => 'unused',
                redis_port => $redis_port);
    nginx_t($dir, 'the node docker/entrypoint.sh rendered');

    psql("TRUNCATE users, users_subscribers RESTART IDENTITY CASCADE;");
    nginx_start($dir, $P);
    my $r = HTTP::Tiny->new(timeout => 5)->post(
        "http://127.0.0.1:$P/v1/users",
        { content => '{"name":"deploy"}' });
    is($r->{status}, 201, "the rendered node reaches PostgreSQL: POST /v1/users")
        or diag($r->{content});

    my $m = HTTP::Tiny->new(timeout => 5)->get("http://127.0.0.1:" . ($P + 1)
                                               . "/metrics")->{content} // '';
    like($m, qr/^presence_heartbeats_total \d+$/m,
         "the metric of the HPA's rule is on /metrics");
    like($m, qr/^presence_online_users \d+$/m, "and presence_online_users");

    {
        local $ENV{PRESENCE_HEALTH_PORT} = $P + 1;
        is(system('bash docker/healthcheck.sh 2>/dev/null'), 0,
           "the image's health check passes on a running node");

        # the preStop (docker/prestop.sh): not ready while it drains, yet
        # alive and serving, then a graceful quit
        my $t0 = Time::HiRes::time();
        my $pid = fork // die "fork: $!";
        if (!$pid) {
            @ENV{qw(PRESENCE_PREFIX PRESENCE_DRAIN_SECONDS PRESENCE_QUIT_SECONDS)}
                = ($dir, 2, 15);
            exec 'sh', 'docker/prestop.sh' or exit 127;
        }
        my $m = "http://127.0.0.1:" . ($P + 1);
        my $ua = HTTP::Tiny->new(timeout => 2);
        my $h;
        for (1 .. 40) {
            $h = $ua->get("$m/healthz");
            last if $h->{status} == 503;
            Time::HiRes::sleep(0.05);
        }
        is($h->{status}, 503, "preStop: /healthz is not ready while the node drains");
        like($h->{content} // '', qr/^\{"error":\{"code":"unavailable","message":"[^"]*draining/,
             "saying so, in the API's error body");
        is($ua->get("$m/livez")->{status}, 200, "alive meanwhile (/livez)");
        isnt(system('bash docker/healthcheck.sh 2>/dev/null'), 0,
             "the image's health check says not ready");
        $r = $ua->post("http://127.0.0.1:$P/v1/users",
                       { content => '{"name":"draining"}' });
        is($r->{status}, 201, "and the node still serves");
        waitpid($pid, 0);
        is($?, 0, "preStop: nginx quit gracefully within its time");
        ok(Time::HiRes::time() - $t0 >= 2, "after the drain");
        ok(!kill(0, slurp("$dir/nginx.pid") =~ s/\s+//r),
           "the master is gone") if -e "$dir/nginx.pid";
        isnt(system('bash docker/healthcheck.sh 2>/dev/null'), 0,
             "the health check fails when it is gone");
        nginx_stop($dir);
    }
    my @bad = grep { /\[(?:error|crit|alert|emerg)\]/ }
              split /\n/, slurp("$dir/error.log");
    ok(!@bad, "no error in its log") or diag(join "\n", grep { defined } @bad[0 .. 4]);
}


# 3b. presence_redis beside nchan, as docker/nginx-node.conf has it: nchan
# exports the symbols of its own copy of hiredis; the module keeps its
# hiredis private (config), or the workers die on their first connection

{
    my $dir = "$root/redis";
    render_node(dir => $dir, port => $P, pg_dsn => $dsn,
                redis_port => $redis_port);
    like(slurp("$dir/nginx.conf"), qr/^\s*presence_redis\s/m,
         'the node config writes to Redis');
    nginx_t($dir, 'the node with presence_redis');
    nginx_start($dir, $P);
    Time::HiRes::sleep(1.5);
    nginx_stop($dir);
    my $log = slurp("$dir/error.log");
    my $crashes = () = $log =~ /exited on signal/g;
    is($crashes, 0, "presence_redis and nchan in one nginx: no worker dies");
    unlike($log, qr/NOAUTH|expects a password|WRONGPASS/,
           "both log in to a Redis that requires a password");
}


# 4. the schema of sql/, applied twice, as the image's initdb does once
# (into a schema of its own: a fresh database needs a superuser)

{
    my $sql = "SET client_min_messages = warning;\n"
            . "DROP SCHEMA IF EXISTS deploy_check CASCADE;\n"
            . "CREATE SCHEMA deploy_check;\n"
            . "SET search_path = deploy_check, public;\n";
    for my $round (1, 2) {
        $sql .= slurp($_) for sort glob 'sql/*.sql';
    }
    ok(eval { psql($sql); 1 }, "sql/*.sql applied twice") or diag($@);

    my $out = `psql -X -At '$dsn' -c "SELECT string_agg(indexname, ',' ORDER BY indexname) FROM pg_indexes WHERE schemaname = 'deploy_check'" 2>&1`;
    chomp $out;
    is($out, 'users_pkey,users_subscribers_pkey,users_subscribers_user_id_t_idx,'
             . 'users_user_name_lower_c_idx,users_user_name_lower_key,'
             . 'users_user_name_trgm_idx',
       "the tables' indexes, once each");
    $out = `psql -X -q '$dsn' -c "SET search_path = deploy_check, public" -c "INSERT INTO users (user_name) VALUES ('Ann'), ('ann')" 2>&1`;
    like($out, qr/users_user_name_lower_key/, "names unique case-insensitively");
    psql("SET client_min_messages = warning;\nDROP SCHEMA deploy_check CASCADE;");
}


# 5. the Dockerfile

{
    my $df = slurp('docker/Dockerfile');
    my @from = $df =~ /^FROM\s+(\S+)/mg;
    is(scalar @from, 2, "Dockerfile: two stages");
    like($df, qr/^ARG DEBIAN=debian:bookworm$/m, "Dockerfile: on debian:bookworm");

    my ($build, $run) = split /^FROM \$\{DEBIAN\}\s*$/m, (split /AS build/, $df, 2)[1];
    for my $p (qw(nginx-dev libpq-dev libjansson-dev libssl-dev
                  libhiredis-dev librdkafka-dev)) {
        like($build, qr/\b\Q$p\E\b/, "build stage installs $p");
    }
    like($build, qr/conf_flags.*--add-dynamic-module.*modules/s,
         "build stage: Debian's conf_flags, --add-dynamic-module, make modules");
    unlike($run // '', qr/\b[\w.+]+-dev\b/, "runtime stage: no -dev package");
    like($run // '', qr/\bnginx libnginx-mod-nchan\b/, "runtime: nginx and nchan");
    like($run // '', qr/^USER presence/m, "runtime: not root");
    like($run // '', qr/^HEALTHCHECK .*presence-healthcheck/ms, "runtime: HEALTHCHECK");

    # every library the module links comes from a package the runtime has
    my $so = "$PresenceDeploy::MODULE_DIR/ngx_http_presence_module.so";
    # (make test's AddressSanitizer build links libasan too)
    my @needed = grep { !/^libasan\./ }
                 `objdump -p $so` =~ /^\s*NEEDED\s+(\S+)/mg;
    ok(@needed, "objdump: the module's libraries");
    for my $lib (@needed) {
        next if $lib =~ /^(?:libc|libm|libpthread|libdl)\.so/;
        my ($pkg) = `dpkg -S '*/$lib' 2>/dev/null` =~ /^([^:]+)/;
        $pkg //= "(no package has $lib)";
        like($run // '', qr/\s\Q$pkg\E\s/, "runtime installs $lib ($pkg)");
    }

    # the build stage's recipe, run here: /src is this checkout, /build a
    # folder of the test (the same nginx-dev and libraries as the image's)
    my ($recipe) = $build =~ /^RUN (cp -r \/usr\/share\/nginx\/src \/build\b.*?[^\\])\n/ms;
    ok($recipe, "build stage: the recipe");
    my $bdir = "$root/dockerbuild";
    my $top = Cwd::abs_path('.');
    $recipe =~ s{\\\n}{ }g;
    $recipe =~ s{ /build\b}{ $bdir}g;
    $recipe =~ s{cd /build\b}{cd $bdir}g;
    $recipe =~ s{--add-dynamic-module=/src\b}{--add-dynamic-module=$top}g;
    $recipe =~ s{"\$\(nproc\)"}{2}g;
    my $out = `bash -euo pipefail -c '$recipe' 2>&1`;
    my $so2 = "$bdir/objs/ngx_http_presence_module.so";
    ok($? == 0 && -s $so2, "the build stage's recipe builds the module")
        or diag(substr($out, -2000));
    is_deeply([sort `objdump -p $so2 2>/dev/null` =~ /^\s*NEEDED\s+(\S+)/mg],
              [sort @needed], "linking what util/build.sh's module links");

    is(system('sh', '-n', 'docker/entrypoint.sh'), 0, "entrypoint.sh parses");
    is(system('bash', '-n', 'docker/healthcheck.sh'), 0, "healthcheck.sh parses");
}


# 6. the Kubernetes manifests

{
    my %k;
    for my $file (sort glob 'docker/k8s/*.yaml') {
        my @docs = eval { YAML::XS::LoadFile($file) };
        ok(!$@ && @docs, "YAML: $file") or diag($@);
        for my $d (@docs) {
            push @{ $k{$d->{kind}} }, $d if ref $d eq 'HASH' && $d->{kind};
        }
    }
    my ($dep) = @{ $k{StatefulSet} || [] };
    my %svcs = map { $_->{metadata}{name} => $_ } @{ $k{Service} || [] };
    my $svc = $svcs{presence};
    my ($hpa) = @{ $k{HorizontalPodAutoscaler} || [] };
    my ($pdb) = @{ $k{PodDisruptionBudget} || [] };
    my %cm = map { $_->{metadata}{name} => $_ } @{ $k{ConfigMap} || [] };
    my ($ing) = @{ $k{Ingress} || [] };

    ok($dep && $svc && $hpa && $pdb && $ing && $cm{'presence-nginx'},
       "k8s: StatefulSet, Service, HPA, PDB, Ingress, ConfigMap");
    ok(!$k{Deployment}, "no Deployment: the nodes' names are stable");

    my $labels = $dep->{spec}{template}{metadata}{labels};
    is_deeply($dep->{spec}{selector}{matchLabels}, $labels,
              "Deployment selects its pods");
    my $pod = $dep->{spec}{template}{spec};
    my ($c) = @{ $pod->{containers} };
    my %port = map { $_->{name} => $_->{containerPort} } @{ $c->{ports} };
    is_deeply(\%port, { http => 8080, metrics => 9145 }, "container ports");
    my %probe_path = (readinessProbe => '/healthz', livenessProbe => '/livez');
    for my $probe (sort keys %probe_path) {
        is($c->{$probe}{httpGet}{path}, $probe_path{$probe},
           "$probe on $probe_path{$probe}");
        is($port{ $c->{$probe}{httpGet}{port} } // '', 9145,
           "$probe on the metrics port");
    }

    # a stable node name: the pod's, in a StatefulSet with a headless Service
    my %env = map { $_->{name} => $_ } @{ $c->{env} || [] };
    is($env{PRESENCE_NODE}{valueFrom}{fieldRef}{fieldPath} // '', 'metadata.name',
       "PRESENCE_NODE is the pod's name (the downward API)");
    my $headless = $svcs{ $dep->{spec}{serviceName} // '' } || {};
    is($headless->{spec}{clusterIP} // '', 'None',
       "the StatefulSet's Service is headless");
    is_deeply($headless->{spec}{selector}, $labels, "and selects the pods");
    like($env{PRESENCE_KAFKA}{value} // '', qr/^\S+:\d+/, "Kafka is given (required)");
    ok($dep->{spec}{replicas} >= 3, "at least three nodes");

    # the preStop hands the users over within the grace period
    is_deeply($c->{lifecycle}{preStop}{exec}{command},
              ['/usr/local/bin/presence-prestop'], "preStop: docker/prestop.sh");
    like(slurp('docker/Dockerfile'),
         qr{^COPY docker/prestop\.sh /usr/local/bin/presence-prestop$}m,
         "which the image has");
    my ($drain_default) = slurp('docker/prestop.sh') =~ /PRESENCE_DRAIN_SECONDS:-(\d+)/;
    my ($quit_default) = slurp('docker/prestop.sh') =~ /PRESENCE_QUIT_SECONDS:-(\d+)/;
    my $drain = $env{PRESENCE_DRAIN_SECONDS}{value} // $drain_default;
    my ($shutdown) = slurp('docker/nginx-node.conf') =~ /^worker_shutdown_timeout\s+(\d+)s;/m;
    ok($drain >= 15, "the drain ($drain s) covers the endpoints and a heartbeat interval");
    ok($quit_default >= $shutdown, "the quit waits worker_shutdown_timeout ($shutdown s)");
    ok($pod->{terminationGracePeriodSeconds} >= $drain + $shutdown + 5,
       "terminationGracePeriodSeconds ($pod->{terminationGracePeriodSeconds}) "
       . ">= drain + worker_shutdown_timeout + 5 s");
    ok($pod->{securityContext}{runAsNonRoot}
       && $pod->{securityContext}{runAsUser} == 10001, "pods run as presence");
    ok($c->{securityContext}{readOnlyRootFilesystem}, "read-only root");
    my %vol = map { $_->{name} => $_ } @{ $pod->{volumes} };
    my %mnt = map { $_->{mountPath} => $_->{name} } @{ $c->{volumeMounts} };
    is($vol{ $mnt{'/etc/presence/nginx-node.conf'} // '' }{configMap}{name},
       'presence-nginx', "the ConfigMap is the node's nginx.conf");
    ok($vol{ $mnt{'/var/lib/presence'} // '' }{emptyDir},
       "/var/lib/presence is writable");
    is($vol{ $mnt{'/run/secrets'} // '' }{secret}{items}[0]{path},
       'presence_secret', "the tokens' key where the config reads it");

    is($cm{'presence-nginx'}{data}{'nginx-node.conf'},
       slurp('docker/nginx-node.conf'),
       "the ConfigMap holds docker/nginx-node.conf as is "
       . "(else: sh docker/k8s/configmap.sh)");

    is_deeply($svc->{spec}{selector}, $labels, "Service selects the pods");
    my %sp = map { $_->{name} => $_->{targetPort} } @{ $svc->{spec}{ports} };
    is($sp{http}, 'http', "Service: http");

    # port 9145 (/metrics, /nchan_status): not in the Service the ingress
    # uses, or reachable from the monitoring namespace's Prometheus only
    my @np = grep { my $sel = $_->{spec}{podSelector}{matchLabels} || {};
                    !grep { ($labels->{$_} // '') ne $sel->{$_} } keys %$sel }
             @{ $k{NetworkPolicy} || [] };
    ok(@np, "a NetworkPolicy selects the pods");
    my (@open, @metrics_from);
    for my $np (@np) {
        next unless grep { $_ eq 'Ingress' } @{ $np->{spec}{policyTypes} || [] };
        for my $rule (@{ $np->{spec}{ingress} || [] }) {
            my @ports = map { $_->{port} } @{ $rule->{ports} || [] };
            my $metrics = !@ports || grep { $_ eq '9145' || $_ eq 'metrics' } @ports;
            next unless $metrics;
            my @from = @{ $rule->{from} || [] };
            push @open, $rule unless @from;
            push @metrics_from, @from;
        }
    }
    ok(@np && !@open, "no rule lets everyone reach the metrics port");
    ok(@metrics_from && !grep({
           ($_->{namespaceSelector}{matchLabels}{'kubernetes.io/metadata.name'}
            // '') ne 'monitoring' || !$_->{podSelector} || $_->{ipBlock} }
           @metrics_from),
       "the metrics port: Prometheus of the monitoring namespace only")
        or diag(YAML::XS::Dump(\@metrics_from));

    is($hpa->{apiVersion}, 'autoscaling/v2', "HPA v2");
    is($hpa->{spec}{scaleTargetRef}{name}, $dep->{metadata}{name},
       "HPA scales the StatefulSet");
    is($hpa->{spec}{scaleTargetRef}{kind}, 'StatefulSet', "(kind StatefulSet)");
    my %m = map { $_->{type} => $_ } @{ $hpa->{spec}{metrics} };
    is($m{Resource}{resource}{name}, 'cpu', "HPA on CPU");
    my $custom = $m{Pods}{pods}{metric}{name} // '';
    ok($custom, "HPA on a per-pod custom metric ($custom)");
    my $rules = YAML::XS::Load($cm{'prometheus-adapter'}{data}{'config.yaml'});
    my ($rule) = grep { $_->{name}{as} eq $custom } @{ $rules->{rules} };
    ok($rule, "prometheus-adapter makes $custom");
    like($rule->{seriesQuery} // '', qr/^presence_\w+/,
         "from a metric of /metrics");

    is_deeply($pdb->{spec}{selector}{matchLabels}, $labels, "PDB selects the pods");
    ok(defined $pdb->{spec}{maxUnavailable} || defined $pdb->{spec}{minAvailable},
       "PDB bounds the disruption");
    my $min = $hpa->{spec}{minReplicas};
    my $keep = defined $pdb->{spec}{minAvailable} ? $pdb->{spec}{minAvailable}
                                                  : $min - $pdb->{spec}{maxUnavailable};
    ok($keep =~ /^\d+$/ && $keep * 2 > $min,
       "PDB keeps a majority of the nodes ($keep of at least $min)");

    my ($lb_key) = slurp('docker/nginx-lb.conf') =~ /^\s*hash\s+(\S+)\s+consistent;/m;
    is($ing->{metadata}{annotations}{'nginx.ingress.kubernetes.io/upstream-hash-by'},
       $lb_key, "Ingress hashes on the LB's key ($lb_key)");
    my $ic = $cm{'ingress-nginx-controller'}{data} || {};
    like($ic->{'main-snippet'} // '', qr{^load_module\s+\S+/ngx_http_presence_module\.so;}m,
         "the ingress controller loads the module");
    like($ic->{'http-snippet'} // '',
         qr{^presence_auth_secret_file\s+/run/secrets/presence_secret;}m,
         "with the nodes' key");
    my @lb_maps = slurp('docker/nginx-lb.conf')
                  =~ /^    (map \$presence_user \$presence_\w+ \{.*?^    \})/msg;
    my @ing_maps = ($ic->{'http-snippet'} // '') =~ /^(map .*?^\})/msg;
    s/^    //mg for @lb_maps;
    is(scalar @lb_maps, 1, "the LB's map of the key");
    is_deeply(\@ing_maps, \@lb_maps, "the Ingress's key is the LB's");
}

done_testing();
