"""Host: the objects of one instances_path, wired once from Settings. The API's front door."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import platformdirs

from vmdisk import diskinfo, lifecycle
from vmdisk.backends.rbd import RbdConfig, remove_instance_images
from vmdisk.boot import BootResult, Stream, boot_libvirt, boot_qemu
from vmdisk.errors import ImageNotFound, UnsafeImage
from vmdisk.fsutil import direct_io_supported, ensure_real_dir, write_atomic
from vmdisk.imagecache.cleaner import (
    CleanupPlan,
    CleanupPolicy,
    CleanupResult,
    apply_cleanup,
    hostname,
    plan_cleanup,
    read_hosts,
    register_host,
)
from vmdisk.imagecache.entries import scan
from vmdisk.imagecache.glance import FORMATS as GLANCE_FORMATS
from vmdisk.imagecache.glance import SCHEME as GLANCE_SCHEME
from vmdisk.imagecache.glance import Glance, GlanceSource, image_id_of
from vmdisk.imagecache.locks import Locks
from vmdisk.imagecache.sources import ImageSource, open_source
from vmdisk.imagecache.store import CachedImage, ImageCache, ImageRequest
from vmdisk.imagecache.templates import TemplateCache
from vmdisk.imagecache.usage import bases_in_use
from vmdisk.imagecache.verify import Verdict, verify_cache
from vmdisk.instances import Instance, InstanceStore
from vmdisk.libvirt import probe
from vmdisk.libvirt.domain import CephFacts, Domain, HostFacts, instance_domain
from vmdisk.model import BootOptions, InstancePlan, InstanceSpec
from vmdisk.plan import plan_disks
from vmdisk.progress import NoProgress, Progress
from vmdisk.provision import Provisioner, check_disks_present, write_domain_xml
from vmdisk.settings import Settings
from vmdisk.tools.ceph import monitors
from vmdisk.tools.qemu_img import QemuImg
from vmdisk.tools.runner import Limits, Runner, SubprocessRunner


class Host:
    """Everything vmdisk does on this host. Build one per process and reuse it."""

    def __init__(
        self,
        settings: Settings,
        runner: Runner | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.settings = settings
        self.runner: Runner = runner or SubprocessRunner()
        self.progress = progress or NoProgress()
        lib = settings.libvirt
        self.limits = Limits(lib.images_address_space_limit, lib.images_cpu_time_limit)
        self.qemu = QemuImg(self.runner, self.limits)
        self.locks = Locks(settings.locks_dir)
        self.cache = ImageCache(
            settings.base_dir,
            self.locks,
            self.qemu,
            force_raw=settings.force_raw_images,
            max_virtual_size=settings.image_cache.max_virtual_size,
            sources=self.open_source,
            progress=self.progress,
        )
        self.templates = TemplateCache(settings.base_dir, self.locks)
        reserved = frozenset({settings.image_cache.subdirectory_name, "locks", "compute_nodes"})
        self.store = InstanceStore(settings.instances_path, self.locks, reserved)
        self.rbd = RbdConfig(
            pool=lib.images_rbd_pool,
            conf=Path(lib.images_rbd_ceph_conf) if lib.images_rbd_ceph_conf else None,
            user=lib.rbd_user,
            secret_uuid=lib.rbd_secret_uuid,
        )
        self.provisioner = Provisioner(
            self.cache,
            self.templates,
            self.store,
            self.qemu,
            self.runner,
            self.host_facts,
            self.rbd,
        )
        self._facts: HostFacts | None = None
        self._prepared = False

    def host_facts(self) -> HostFacts:
        """KVM or TCG, O_DIRECT, machine and network: decided once per process."""
        if self._facts is None:
            lib = self.settings.libvirt
            self.prepare()
            ceph = CephFacts(
                hosts=monitors(self.rbd.conf) if self.rbd.conf else (),
                user=self.rbd.user,
                secret_uuid=self.rbd.secret_uuid,
                conf=self.rbd.conf,
            )
            self._facts = HostFacts(
                virt_type=probe.virt_type(self.runner, lib.virt_type, cache_dir()),
                machine=lib.machine_type,
                direct_io=direct_io_supported(self.settings.instances_path),
                interface=lib.network,
                ceph=ceph,
            )
        return self._facts

    def open_source(self, text: str) -> ImageSource:
        """Sources by scheme: glance:// through the configured Glance, the rest as given."""
        if text.startswith(GLANCE_SCHEME):
            return GlanceSource(self.glance(), image_id_of(text))
        c = self.settings.image_cache
        return open_source(
            text, connect_timeout=c.download_connect_timeout, stall_timeout=c.download_stall_timeout
        )

    def glance(self) -> Glance:
        g = self.settings.glance
        return Glance(g.api_url, g.token, g.project)

    def resolve(self, request: ImageRequest) -> ImageRequest:
        """Fill what Glance knows: the id, the declared format, the hash, an rbd:// location."""
        if not request.source.startswith(GLANCE_SCHEME):
            return request
        image = self.glance().image(image_id_of(request.source))
        if image.status != "active":
            raise ImageNotFound(
                f"Glance image {image.id} is {image.status}, not active", reason="not-active"
            )
        declared = GLANCE_FORMATS.get(image.disk_format)
        if declared is None:
            raise UnsafeImage(
                f"Glance disk_format {image.disk_format!r} is not allowed", reason="format-mismatch"
            )
        if request.declared_format and request.declared_format != declared:
            raise UnsafeImage(
                f"declared {request.declared_format} but Glance says {declared}",
                reason="format-mismatch",
            )
        return dataclasses.replace(
            request,
            image_id=request.image_id or image.id,
            declared_format=declared,
            checksum=request.checksum or image.checksum,
            location=image.direct_url if declared == "raw" else None,
        )

    def prepare(self) -> None:
        """Create instances_path, _base and locks; refuse any of them being a symlink."""
        if self._prepared:
            return
        ensure_real_dir(self.settings.instances_path)
        ensure_real_dir(self.settings.base_dir)
        ensure_real_dir(self.settings.locks_dir)
        self._prepared = True

    def fetch_image(self, request: ImageRequest) -> CachedImage:
        self.prepare()
        return self.cache.ensure(self.resolve(request))

    def plan(
        self,
        spec: InstanceSpec,
        request: ImageRequest,
        boot_files: Mapping[str, ImageRequest] | None = None,
    ) -> InstancePlan:
        image_id, _ = self.cache.identify(request)
        boot_ids = {name: self.cache.identify(r)[0] for name, r in (boot_files or {}).items()}
        return plan_disks(spec, self.settings, image_id, boot_ids)

    def create_instance(
        self,
        spec: InstanceSpec,
        request: ImageRequest,
        boot_files: Mapping[str, ImageRequest] | None = None,
    ) -> Instance:
        """Create an instance; `boot_files` maps "kernel"/"ramdisk" to their image requests."""
        boot_files = {
            name: dataclasses.replace(self.resolve(r), kind=name)
            for name, r in (boot_files or {}).items()
        }
        request = self.resolve(request)
        plan = self.plan(spec, request, boot_files)
        self.prepare()
        return self.provisioner.create(plan, request, boot_files)

    def describe(self, inst: Instance) -> dict[str, Any]:
        return lifecycle.describe(inst, self.rbd)

    def instances(self) -> list[Instance]:
        return self.store.all()

    def instance(self, ref: str) -> Instance:
        return self.store.find(ref)

    def delete_instance(self, ref: str) -> Instance:
        inst = self.store.find(ref)
        remove_instance_images(self.rbd, [d["rbd"] for d in inst.record.disks if d.get("rbd")])
        self.store.delete(inst)
        return inst

    def resize_instance(self, ref: str, root_gb: int | None, ephemeral_gb: int | None) -> Instance:
        inst = lifecycle.resize(self.provisioner, self.store.find(ref), root_gb, ephemeral_gb)
        write_domain_xml(inst, self.host_facts())
        return inst

    def rescue_instance(
        self,
        ref: str,
        request: ImageRequest | None,
        boot_files: Mapping[str, ImageRequest] | None = None,
    ) -> Instance:
        inst = self.store.find(ref)
        request = request or ImageRequest(
            source=inst.record.image_source or inst.record.image_id, image_id=inst.record.image_id
        )
        boot_files = {
            name: dataclasses.replace(r, kind=name) for name, r in (boot_files or {}).items()
        }
        inst = lifecycle.rescue(self.provisioner, inst, request, boot_files)
        write_domain_xml(inst, self.host_facts())
        return inst

    def unrescue_instance(self, ref: str) -> Instance:
        inst = lifecycle.unrescue(self.provisioner, self.store.find(ref))
        write_domain_xml(inst, self.host_facts())
        return inst

    def domain(
        self,
        ref: str,
        *,
        rescue: bool | None = None,
        kernel: Path | None = None,
        initrd: Path | None = None,
        cmdline: str | None = None,
    ) -> Domain:
        inst = self.store.find(ref)
        rescuing = inst.record.rescue is not None if rescue is None else rescue
        return instance_domain(
            inst, self.host_facts(), rescue=rescuing, kernel=kernel, initrd=initrd, cmdline=cmdline
        )

    def boot(self, ref: str, options: BootOptions, stream: Stream | None = None) -> BootResult:
        inst = self.store.find(ref)
        check_disks_present(inst, self.settings.base_dir)
        lifecycle.ensure_legacy_backing(
            self.provisioner,
            inst.path / "disk",
            diskinfo.read(inst.path).get(str(inst.path / "disk"), ""),
        )
        domain = self.domain(
            ref,
            rescue=options.rescue,
            kernel=options.kernel,
            initrd=options.initrd,
            cmdline=options.cmdline,
        )
        if options.via == "libvirt":
            return boot_libvirt(
                self.runner,
                domain,
                uri=options.uri,
                timeout=options.timeout,
                wait_for=options.wait_for,
                keep=options.keep,
                stream=stream,
            )
        return boot_qemu(
            self.runner, domain, timeout=options.timeout, wait_for=options.wait_for, stream=stream
        )

    def cleanup_policy(self) -> CleanupPolicy:
        c = self.settings.image_cache
        return CleanupPolicy(
            remove_unused=c.remove_unused_base_images,
            original_min_age=c.remove_unused_original_minimum_age_seconds,
            resized_min_age=c.remove_unused_resized_minimum_age_seconds,
            template_min_age=c.remove_unused_template_minimum_age_seconds,
            temporary_min_age=c.remove_temporary_minimum_age_seconds,
            max_size=c.max_size,
        )

    def prune(
        self, *, dry_run: bool = False, policy: CleanupPolicy | None = None
    ) -> tuple[CleanupPlan, CleanupResult | None]:
        """One pass of the image cache manager; see imagecache/cleaner.py for the protocol."""
        self.prepare()
        policy = policy or self.cleanup_policy()
        started = time.time()
        registry = self.settings.instances_path / "compute_nodes"
        hosts = read_hosts(registry)
        if not dry_run:
            self.store.reap()
            hosts = register_host(registry, self.locks, hostname(), started, write_atomic)
        in_use = bases_in_use(self.store, self.settings.base_dir)
        plan = plan_cleanup(scan(self.settings.base_dir), in_use, hosts, started, policy)
        if dry_run:
            return plan, None
        return plan, apply_cleanup(plan, self.settings.base_dir, self.locks, started, policy)

    def verify_cache(self) -> list[Verdict]:
        self.prepare()
        return verify_cache(self.cache)


def cache_dir() -> Path:
    """Host-wide cache for probe answers: /var/cache/vmdisk for root, else the user's."""
    if os.geteuid() == 0:
        return Path("/var/cache/vmdisk")
    return Path(platformdirs.user_cache_dir("vmdisk"))
