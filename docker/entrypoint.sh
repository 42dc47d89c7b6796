#!/usr/bin/env bash
# The image's entry point: one image for Spark's driver and executors, on Kubernetes and
# everywhere else.
#
#   driver ARG...      the driver pod of Spark on Kubernetes (the backend passes
#                      `--properties-file FILE --class CLASS APP ARG...`): spark-submit in
#                      client mode, bound to SPARK_DRIVER_BIND_ADDRESS (the pod's IP) when set,
#                      reading the image's spark-defaults.conf too (its baked jars after
#                      Spark's own, Delta's settings, S3A for s3://); FILE's keys win
#   executor           an executor pod: the JVM of Spark's KubernetesExecutorBackend, set up by
#                      the variables the driver gives the pod (below)
#   -OPTION ... | APP.py ...
#                      spark-submit's own arguments; the default command
#                      (`pipelines/ingest.py --profile local`) is one
#   anything else      run as it is: spark-submit ..., spark-class ..., python ..., sh ...
#
# Executor variables (set by Spark's Kubernetes backend; required unless a default is shown):
#   SPARK_DRIVER_URL            spark://CoarseGrainedScheduler@HOST:PORT
#   SPARK_EXECUTOR_ID           the executor's id (EXECID: the driver assigns one)
#   SPARK_EXECUTOR_CORES        cores of this executor
#   SPARK_APPLICATION_ID        the application's id
#   SPARK_EXECUTOR_MEMORY       the JVM's heap, -Xms and -Xmx (default 1g)
#   SPARK_EXECUTOR_POD_IP       the address it advertises (default: Spark's, the host name)
#   SPARK_EXECUTOR_POD_NAME     the pod's name (optional)
#   SPARK_RESOURCE_PROFILE_ID   the resource profile (default 0)
#   SPARK_JAVA_OPT_0, _1, ...   JVM options, in the order of their numbers
#   SPARK_CLASSPATH             put before Spark's jars (spark.executor.extraClassPath)
#
# The executor's class path is Spark's jars (the installed pyspark's), then the jars the image
# build baked (the `spark.jars` of its spark-defaults.conf: Delta, S3A): what the driver
# loads, whether or not it reads spark-defaults.conf.
set -euo pipefail

spark_home() {
    if [ -z "${SPARK_HOME:-}" ]; then
        SPARK_HOME="$(python -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')"
        export SPARK_HOME
    fi
}

# Jar files named by spark.jars in spark-defaults.conf, ':'-separated (empty if none).
baked_jars() {
    local conf="${SPARK_CONF_DIR:-$SPARK_HOME/conf}/spark-defaults.conf"
    [ -f "$conf" ] || return 0
    sed -n 's/^spark\.jars[[:space:]=]\{1,\}//p' "$conf" | head -1 \
        | tr ',' '\n' | sed 's#^file:\(//\)\{0,1\}##' | paste -sd: -
}

# A uid without a passwd entry (Kubernetes' runAsUser, OpenShift): Hadoop's login needs a
# user name, Ivy and Python a home.
if ! getent passwd "$(id -u)" >/dev/null 2>&1; then
    export HADOOP_USER_NAME="${HADOOP_USER_NAME:-spark}" SPARK_USER="${SPARK_USER:-spark}"
    if [ -z "${HOME:-}" ] || [ "$HOME" = / ] || [ ! -w "$HOME" ]; then
        export HOME=/tmp
    fi
fi

case "${1:-}" in
    driver)
        shift
        # Without --load-spark-defaults a properties file hides spark-defaults.conf.
        args=(--deploy-mode client --load-spark-defaults)
        if [ -n "${SPARK_DRIVER_BIND_ADDRESS:-}" ]; then
            args+=(--conf "spark.driver.bindAddress=$SPARK_DRIVER_BIND_ADDRESS")
        fi
        exec spark-submit "${args[@]}" "$@"
        ;;
    executor)
        shift
        if [ "$#" -gt 0 ]; then
            echo "entrypoint.sh: executor takes no arguments (its settings are SPARK_* variables), got: $*" >&2
            exit 2
        fi
        missing=()
        for var in SPARK_DRIVER_URL SPARK_EXECUTOR_ID SPARK_EXECUTOR_CORES SPARK_APPLICATION_ID; do
            [ -n "${!var:-}" ] || missing+=("$var")
        done
        if [ "${#missing[@]}" -gt 0 ]; then
            echo "entrypoint.sh: executor: ${missing[*]} not set (Spark's Kubernetes backend sets them)" >&2
            exit 2
        fi
        spark_home
        classpath="$SPARK_HOME/jars/*"
        baked="$(baked_jars)"
        [ -z "$baked" ] || classpath="$classpath:$baked"
        [ -z "${SPARK_CLASSPATH:-}" ] || classpath="$SPARK_CLASSPATH:$classpath"
        # SPARK_JAVA_OPT_<n> in the order of n (10 after 9).
        java_opts=()
        while IFS= read -r var; do
            [ -n "$var" ] && java_opts+=("${!var}")
        done < <(compgen -e | sed -n 's/^SPARK_JAVA_OPT_\([0-9]\{1,\}\)$/\1 &/p' | sort -n | cut -d' ' -f2)
        memory="${SPARK_EXECUTOR_MEMORY:-1g}"
        backend=(
            --driver-url "$SPARK_DRIVER_URL"
            --executor-id "$SPARK_EXECUTOR_ID"
            --cores "$SPARK_EXECUTOR_CORES"
            --app-id "$SPARK_APPLICATION_ID"
            --resourceProfileId "${SPARK_RESOURCE_PROFILE_ID:-0}"
        )
        [ -z "${SPARK_EXECUTOR_POD_IP:-}" ] || backend+=(--hostname "$SPARK_EXECUTOR_POD_IP")
        [ -z "${SPARK_EXECUTOR_POD_NAME:-}" ] || backend+=(--podName "$SPARK_EXECUTOR_POD_NAME")
        exec java "${java_opts[@]}" "-Xms$memory" "-Xmx$memory" -cp "$classpath" \
            org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend "${backend[@]}"
        ;;
    "" | -*  | *.py)
        exec spark-submit "$@"
        ;;
    *)
        exec "$@"
        ;;
esac
