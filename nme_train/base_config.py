"""Every config field the trainer reads, with its meaning and a neutral default.

Experiment files in configs/ start from `base_config()` and change what
their recipe needs; the trainer validates the result (nme_train.validation)
before building anything.
"""

import ml_collections

from nme_train.models import model_fields


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0  # initialisation, data order and augmentation all derive from it

    # -- data ------------------------------------------------------------
    c.data = ml_collections.ConfigDict()
    c.data.name = "digits"  # digits | fashion_mnist | cifar10 | cifar100 | imagenet2012
    c.data.data_dir = ""  # TFDS data dir; "" = $TFDS_DATA_DIR or ~/tensorflow_datasets
    c.data.train_split = ""  # "" = the dataset's standard training split
    c.data.eval_split = ""  # "" = the dataset's standard test/validation split
    c.data.augment = "none"  # none | flip | pad_crop | pad_crop_flip | inception_crop_flip
    c.data.label_noise = 0.0  # fraction of training examples relabelled to another class,
    #                           fixed per example by label_noise_seed (evaluation untouched)
    c.data.label_noise_seed = 0
    c.data.image_size = 0  # side of the model's input; 0 = the dataset's native size
    c.data.cache = True  # decode small datasets once into memory (ignored for ImageNet)
    c.data.num_threads = 2  # host threads reading and augmenting batches
    c.data.prefetch = 4  # batches read ahead by those threads
    c.data.num_workers = 0  # worker processes for decoding (use > 0 for ImageNet)
    c.data.decoder = "auto"  # JPEGs: auto | pil | simplejpeg (same pixels; docs/imagenet.md)
    c.data.crop_decode = True  # JPEGs: pick the crop from the header, decode at the smallest
    #                            DCT scale that covers it; False = decode in full, then crop

    # -- model -----------------------------------------------------------
    # The common fields (name, activation, beta, batch_norm, dtype, param_dtype) and every
    # registered model's settings, each declared where its model is defined with its
    # default and meaning (nme_train.models.registry; a field several models read, such as
    # depth, takes the first declaration's default: models.use_model(c, name) selects a
    # model with its own). docs/configuring.md lists them.
    c.model = ml_collections.ConfigDict({k: s.default for k, s in model_fields().items()})

    # -- extensions --------------------------------------------------------
    # Python modules imported before anything is built, each registering components of
    # its own (a model, an activation, a regularizer, an operator kind, a probe figure, a
    # dataset, an optimizer): dotted names importable here, or paths to .py files
    # (relative ones are made absolute when the run starts). Saved in config.json, so the
    # offline prober and a resume import them too. docs/extending.md.
    c.modules = ()

    # -- regularizers ----------------------------------------------------
    # A list of (name, {kwargs}) applied to the objective in order, innermost
    # first (nme_train.regularizers): sam(rho, adaptive, m), gradient_penalty(rho,
    # power, nme, mode, update: H | G | G+NME_act | G+NME_rest), weight_noise(sigma),
    # hessian_trace_penalty(coef, num_probes), gauss_newton_trace_penalty(coef,
    # num_samples, estimator: hutchinson | sampled_labels (the paper's; biased gradient) |
    # sampled_labels_score).
    # E.g. (("gradient_penalty", {"rho": 0.1}),); () = plain training. On the command
    # line: --config.regularizers="(('sam', {'rho': 0.05}),)"
    c.regularizers = ()

    # -- optimization ----------------------------------------------------
    c.batch_size = 128  # global batch, split over all devices and processes
    c.grad_accum_steps = 1  # k microbatches per step (one microbatch's activations in memory);
    #                         the update is the whole batch's for every regularizer but
    #                         BatchNorm's statistics (per microbatch: docs/imagenet.md)
    c.eval_batch_size = 256  # global evaluation batch (the last one is padded)
    c.num_epochs = 10.0  # training length in epochs (> 0), or -1 to use num_train_steps
    c.num_train_steps = -1  # training length in steps (> 0), or -1 to use num_epochs; 0 is refused
    c.label_smoothing = 0.0  # target smoothing of the cross-entropy
    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "nesterov"  # sgd | momentum | nesterov | adam | adamw
    c.optimizer.learning_rate = 0.05  # peak learning rate (after warmup)
    c.optimizer.momentum = 0.9  # momentum / nesterov only
    c.optimizer.weight_decay = 5e-4  # L2 coefficient (decoupled for adamw)
    c.optimizer.weight_decay_on = "kernels"  # kernels (ndim > 1) | all (incl. biases, norms)
    c.optimizer.schedule = "cosine"  # constant | cosine | linear decay after warmup
    c.optimizer.warmup_epochs = 1.0  # linear warmup from 0
    c.optimizer.grad_clip_norm = 0.0  # clip the global gradient norm; 0 = off

    # -- parallelism -----------------------------------------------------
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # devices on the data axis; -1 = all not used by fsdp
    c.mesh.fsdp = 1  # devices that also split parameters and optimizer state
    c.sharding = ml_collections.ConfigDict()
    c.sharding.fsdp_min_size = 2**16  # parameters with fewer elements stay replicated

    # -- checkpoints -----------------------------------------------------
    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 1000  # save interval (also saved at the end and on SIGTERM)
    c.checkpoint.max_to_keep = 3  # newest checkpoints kept; 0 = keep all
    c.checkpoint.keep_every_steps = 0  # also keep every checkpoint at a multiple of this
    c.init_from = ""  # another run's workdir (or .../checkpoints/STEP): start from its
    #                   params and model state with a fresh optimizer

    # -- curvature probes (nme_train.curvature; also run by nme-probe) ----
    c.probes = ml_collections.ConfigDict()
    c.probes.every_steps = 0  # probe interval in steps; 0 = off (also probes at the start
    #                           and the end of training when on)
    c.probes.kinds = ("hessian", "gauss_newton", "nme")  # operators to probe
    c.probes.num_batches = 1  # probe batches: a fixed set from the training split, no
    c.probes.batch_size = 0  # augmentation; 0 = the training batch size (global)
    c.probes.batch_norm = "batch_stats"  # batch_stats (train mode) | running_average (eval)
    c.probes.lanczos_steps = 20  # Lanczos steps per operator (0 = no eigenvalues)
    c.probes.top_k = 5  # largest Ritz values reported
    c.probes.bottom_k = 5  # smallest Ritz values reported (NME: its negative end)
    c.probes.trace_probes = 10  # Hutchinson probes shared by H, G, NME (0 = no traces)
    c.probes.density_runs = 0  # SLQ start vectors per operator (0 = no densities)
    c.probes.density_steps = 30  # Lanczos steps of each SLQ run
    c.probes.alignment = True  # g^T M g / ||g||^2 for each operator
    c.probes.sparsity_threshold = 1e-3  # E9: fraction of |sigma''(x)| above this, per layer
    c.probes.seed = 0  # probe vectors and probe-batch selection
    c.probes.linearize = True  # reuse each batch's linearisation across matvecs
    c.probes.basis_memory = "auto"  # auto | device | host: where the Lanczos basis lives
    c.probes.max_basis_mib = 2048.0  # auto: host memory when the basis is larger than this
    c.probes.precision = "highest"  # matmul precision inside probes (GPU/TPU default is lower)
    c.probes.check_determinism = True  # refuse an operator that changes between calls

    # -- profiler (nme_train.train.profiling) ------------------------------
    c.profile = ml_collections.ConfigDict()
    c.profile.start_step = -1  # trace steps [start_step, start_step + num_steps) into the
    c.profile.num_steps = 5  # run's TensorBoard (profile plugin); -1: none from the config
    c.profile.poll_seconds = 5.0  # how often a job looks for a request (nme-profile); a
    # multi-process job looks at each log line instead (the processes must agree)

    # -- faults ----------------------------------------------------------
    c.watchdog_seconds = -1.0  # exit (code 3) when no step completes for this long; 0 = off;
    #                            -1 = 1800 s in multi-process jobs, off in one process. Keep it
    #                            above the slowest step and checkpoint save (evaluations and
    #                            probes are excluded)

    # -- outputs ---------------------------------------------------------
    c.log_every_steps = 50  # train metrics line (means over the interval)
    c.eval_every_steps = 200  # evaluation interval; 0 = only at the end
    return c
